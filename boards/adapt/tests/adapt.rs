//! The board's learning on the host, with the board's own models (its weight blobs,
//! `f32` and int8) and synthetic accelerometer windows turned into features as on the
//! board: the centres follow a drifted sensor, novel windows move none, what was learned
//! survives a "reset" bit for bit, a corrupt slot falls back, another model's checkpoint
//! is ignored.

use hvae::dist::rng::standard_normal;
use hvae::store::{blob, RamFlash};
use hvae::train::centres::{in_use, SpawnRule, UNUSED_LOG_WEIGHT};
use hvae::{Model, Shape};
use hvae_accel_features::{features, FEATURES, WINDOW};
use hvae_board_adapt::{Adaptable, Int8, Learner, Persist, Restored, Settings};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use std::sync::OnceLock;

/// The board's weight blobs, the models its build compiles in (`f32` and int8).
const F32_BLOB: &[u8] = include_bytes!("../../microbit-v2/model/acc.hvae");
const INT8_BLOB: &[u8] = include_bytes!("../../microbit-v2/model/acc_int8.hvae");

/// The board model's shape (12 features -> 16 -> S^2, K = 4): the blobs are read against
/// it, so a blob of another shape fails every test that reads it.
const SHAPE: Shape =
    Shape::new(FEATURES, &[16], 3, 4).with_posterior(hvae::Posterior::PowerSpherical);
const N: usize = 2 * SHAPE.input + SHAPE.segmenter_len();
const INFER: usize = SHAPE.inference_param_len();
const FLOAT_LEN: usize = hvae::infer::quant::float_len(&SHAPE);
type F32Model = Model<f32, [f32; INFER]>;
type I8Model = Int8<&'static [i8], &'static [i32], FEATURES, FLOAT_LEN>;

/// The `f32` blob's parameters and CRC.
fn f32_blob() -> (Vec<f32>, u32) {
    let mut params = vec![0.0f32; SHAPE.param_len()];
    let crc = blob::read_params(F32_BLOB, &SHAPE, &mut params).unwrap();
    (params, crc)
}

/// CRC of the `f32` blob (the weights' identity in a checkpoint).
fn f32_crc() -> u32 {
    f32_blob().1
}

fn f32_model() -> F32Model {
    Model::new(SHAPE, *f32_blob().0.first_chunk::<INFER>().unwrap()).unwrap()
}

/// The int8 blob's weights, integers, reals and CRC, read once.
struct Int8Blob {
    weights: Vec<i8>,
    ints: Vec<i32>,
    floats: [f32; FLOAT_LEN],
    crc: u32,
}

fn int8_blob() -> &'static Int8Blob {
    static BLOB: OnceLock<Int8Blob> = OnceLock::new();
    BLOB.get_or_init(|| {
        let mut weights = vec![0i8; hvae::infer::quant::weight_len(&SHAPE)];
        let mut ints = vec![0i32; hvae::infer::quant::int_len(&SHAPE)];
        let mut floats = [0.0f32; FLOAT_LEN];
        let crc = blob::read_int8(INT8_BLOB, &SHAPE, &mut weights, &mut ints, &mut floats).unwrap();
        Int8Blob {
            weights,
            ints,
            floats,
            crc,
        }
    })
}

fn int8_model() -> I8Model {
    let b = int8_blob();
    Int8::new(SHAPE, &b.weights[..], &b.ints[..], b.floats).unwrap()
}

/// The board's settings (boards/microbit-v2/src/main.rs), saving every `save_every`.
fn settings(save_every: u32) -> Settings {
    Settings {
        memory: 200.0,
        decay: 0.995,
        spawn: SpawnRule {
            threshold: 0.25,
            window: 32,
            count: 16,
        },
        save_every,
        seed: 1,
    }
}

/// The nRF52833's flash as the NVMC driver presents it: 4-byte words, 4 KiB pages, bits
/// only cleared by a write.
type Ram = RamFlash<4096>;

/// An erased flash of `pages` pages.
fn blank(pages: usize) -> Ram {
    Ram::blank(pages * 4096)
}

/// A sensor: `gain` on every axis and `offset` (g) added, as a drifted LSM303AGR would.
#[derive(Clone, Copy)]
struct Sensor {
    gain: f32,
    offset: [f32; 3],
}

const TRUE: Sensor = Sensor {
    gain: 1.0,
    offset: [0.0; 3],
};

const DRIFTED: Sensor = Sensor {
    gain: 1.3,
    offset: [0.25, -0.2, 0.3],
};

fn unit(v: [f32; 3]) -> [f32; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    v.map(|x| x / n)
}

/// One window of `activity` (0 resting flat, 1 held upright, 2 walking, 3 shaking; the
/// activities of `model/make_model.py`, with a simpler tilt) seen through `sensor`.
fn window(rng: &mut Xoshiro256PlusPlus, activity: usize, sensor: Sensor) -> [f32; FEATURES] {
    let mut n = || standard_normal::<f32, _>(rng);
    let tilt = |base: [f32; 3], sd: f32, n: &mut dyn FnMut() -> f32| {
        unit([base[0] + sd * n(), base[1] + sd * n(), base[2] + sd * n()])
    };
    let mut w = [[0.0f32; 3]; WINDOW];
    match activity {
        0 => {
            let g = tilt([0.0, 0.0, -1.0], 0.1, &mut n);
            for s in w.iter_mut() {
                *s = [0, 1, 2].map(|i| g[i] + 0.01 * n());
            }
        }
        1 => {
            let g = tilt([0.0, -1.0, 0.0], 0.2, &mut n);
            for (t, s) in w.iter_mut().enumerate() {
                let sway = 0.03 * (std::f32::consts::PI * t as f32 / 50.0).sin();
                *s = [0, 1, 2].map(|i| g[i] * (1.0 + sway) + 0.02 * n());
            }
        }
        2 => {
            let g = tilt([0.0, -1.0, 0.0], 0.3, &mut n);
            let f = 1.6 + 0.6 * (n().abs().min(1.0));
            for (t, s) in w.iter_mut().enumerate() {
                let bump = 0.35 * (std::f32::consts::PI * f * t as f32 / 50.0).sin().abs() - 0.22;
                *s = [0, 1, 2].map(|i| g[i] * (1.0 + bump) + 0.05 * n());
            }
        }
        _ => {
            let g = unit([n(), n(), n()]);
            let d = unit([n(), n(), n()]);
            let f = 4.0 + 3.0 * (n().abs().min(1.0));
            for (t, s) in w.iter_mut().enumerate() {
                let shake = 1.2 * (2.0 * std::f32::consts::PI * f * t as f32 / 50.0).sin();
                *s = [0, 1, 2].map(|i| g[i] + shake * d[i] + 0.1 * n());
            }
        }
    }
    for s in w.iter_mut() {
        for (i, v) in s.iter_mut().enumerate() {
            *v = (*v * sensor.gain + sensor.offset[i]).clamp(-2.0, 2.0);
        }
    }
    features(&w)
}

/// `count` windows of the activities in turn, through `sensor`.
fn stream(seed: u64, count: usize, sensor: Sensor) -> Vec<[f32; FEATURES]> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..count)
        .map(|i| window(&mut rng, i % 4, sensor))
        .collect()
}

/// Mean novelty of `model` on `windows` (no learning).
fn mean_novelty<M: Adaptable>(model: &M, windows: &[[f32; FEATURES]]) -> f32 {
    let mut work = vec![0.0f32; SHAPE.work_len()];
    let sum: f32 = windows
        .iter()
        .map(|x| model.segment(x, &mut work).unwrap().novelty())
        .sum();
    sum / windows.len() as f32
}

/// The model's cluster of each activity of `window` (`CLUSTER_NAMES` of the board:
/// shaking, held upright, resting flat, walking).
const CLUSTER_OF: [usize; 4] = [2, 1, 3, 0];

/// Fraction of `windows` (the activities in turn) labelled with their activity's cluster.
fn accuracy<M: Adaptable>(model: &M, windows: &[[f32; FEATURES]]) -> f32 {
    let mut work = vec![0.0f32; SHAPE.work_len()];
    let right = windows
        .iter()
        .enumerate()
        .filter(|(i, x)| model.segment(&x[..], &mut work).unwrap().label == CLUSTER_OF[i % 4])
        .count();
    right as f32 / windows.len() as f32
}

fn adapted<M: Adaptable>(model: &M) -> Vec<f32> {
    let mut v = vec![0.0f32; N];
    model.adapted(&mut v).unwrap();
    v
}

/// Adapts `model` on `windows`; returns the learner.
fn learn<M: Adaptable>(
    model: &mut M,
    windows: &[[f32; FEATURES]],
    s: Settings,
) -> Learner<FEATURES> {
    let mut learner = Learner::<FEATURES>::new(model, s).unwrap();
    let mut work = vec![0.0f32; SHAPE.work_len()];
    for x in windows {
        learner.step(model, x, &mut work).unwrap();
    }
    learner
}

fn follows_a_drifted_sensor<M: Adaptable>(mut model: M) {
    let test = stream(7, 400, DRIFTED);
    let clean = stream(8, 400, TRUE);
    let (before, before_clean) = (mean_novelty(&model, &test), mean_novelty(&model, &clean));
    let (acc_before, acc_clean) = (accuracy(&model, &test), accuracy(&model, &clean));
    let start = adapted(&model);
    learn(&mut model, &stream(3, 2000, DRIFTED), settings(u32::MAX));
    let (after, acc_after) = (mean_novelty(&model, &test), accuracy(&model, &test));
    eprintln!(
        "novelty on the drifted sensor: {before:.4} -> {after:.4} (clean: {before_clean:.4})"
    );
    eprintln!(
        "accuracy on the drifted sensor: {acc_before:.4} -> {acc_after:.4} (clean: {acc_clean:.4})"
    );
    // The drift makes the frozen model's windows far from its centres; adaptation brings
    // them back within reach of where the true sensor's windows sit.
    assert!(
        before > 2.0 * before_clean,
        "the drift must matter: {before} vs {before_clean}"
    );
    assert!(after < 0.5 * before, "novelty {before} -> {after}");
    assert!(
        acc_clean >= 0.95 && acc_before <= 0.8,
        "{acc_clean} {acc_before}"
    );
    assert!(acc_after >= 0.95, "accuracy {acc_before} -> {acc_after}");
    // Normalisation and centres both changed.
    let now = adapted(&model);
    let d = SHAPE.input;
    assert!(now[..2 * d] != start[..2 * d]);
    assert!(now[2 * d..] != start[2 * d..]);
}

#[test]
fn f32_model_follows_a_drifted_sensor() {
    follows_a_drifted_sensor(f32_model());
}

#[test]
fn int8_model_follows_a_drifted_sensor() {
    follows_a_drifted_sensor(int8_model());
}

#[test]
fn novel_windows_move_no_centre() {
    let mut model = f32_model();
    let start = adapted(&model);
    // Every window novel (threshold below any novelty): the normalisation follows the
    // stream, the segmenter stays bit for bit.
    let mut s = settings(u32::MAX);
    s.spawn.threshold = -1.0;
    let mut learner = Learner::<FEATURES>::new(&model, s).unwrap();
    let mut work = vec![0.0f32; SHAPE.work_len()];
    for x in &stream(5, 300, DRIFTED) {
        assert!(learner.step(&mut model, x, &mut work).unwrap().novel);
    }
    let now = adapted(&model);
    let d = SHAPE.input;
    assert_eq!(now[2 * d..], start[2 * d..]);
    assert!(now[..2 * d] != start[..2 * d]);
    // The same stream with the board's threshold moves them.
    let mut model = f32_model();
    learn(&mut model, &stream(5, 300, DRIFTED), settings(u32::MAX));
    assert!(adapted(&model)[2 * d..] != start[2 * d..]);
}

#[test]
fn persisting_novelty_spawns_into_an_unused_slot() {
    // The model with its "shaking" centre (slot 0) made unused: shaking windows are then
    // novel, and after enough of them the spawner gives slot 0 a centre again.
    let mut model = f32_model();
    let (m, k) = (SHAPE.latent, SHAPE.clusters);
    {
        let seg = model.segmenter_mut();
        for i in 0..m {
            seg[i] = seg[m + i];
        }
        seg[k * m + 1] = UNUSED_LOG_WEIGHT;
        assert!(!in_use(&SHAPE, seg, 0));
    }
    let mut learner = Learner::<FEATURES>::new(&model, settings(u32::MAX)).unwrap();
    let mut work = vec![0.0f32; SHAPE.work_len()];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut spawned = None;
    for i in 0..200 {
        let o = learner
            .step(&mut model, &window(&mut rng, 3, TRUE), &mut work)
            .unwrap();
        if o.spawned.is_some() {
            spawned = Some((i, o.spawned));
            break;
        }
    }
    let (at, slot) = spawned.expect("no spawn after 200 shaking windows");
    assert_eq!(slot, Some(0));
    assert!(
        at >= 15,
        "spawned after {at} windows: the rule needs 16 novel ones"
    );
    assert!(in_use(&SHAPE, model.segmenter(), 0));
    // Shaking windows now go to the new centre and are not novel any more.
    let o = learner
        .step(&mut model, &window(&mut rng, 3, TRUE), &mut work)
        .unwrap();
    assert_eq!(o.label, 0);
    assert!(!o.novel, "novelty {}", o.novelty);
}

fn survives_a_reset<M: Adaptable>(make: fn() -> M, identity: u32) {
    let slot = Persist::<Ram, N>::slot_len(&SHAPE);
    assert_eq!(slot, 4096);
    let mut model = make();
    let compiled = adapted(&model);
    let mut store = Persist::<Ram, N>::new(blank(2), SHAPE, identity).unwrap();
    // Blank flash: nothing restored, the model unchanged.
    assert_eq!(store.restore(&mut model).unwrap(), Restored::None);
    assert_eq!(adapted(&model), compiled);
    let learner = learn(&mut model, &stream(3, 500, DRIFTED), settings(u32::MAX));
    let saved = store.save(&model, learner.windows()).unwrap();
    assert_eq!((saved.slot, saved.seq), (0, 1));
    let learned = adapted(&model);
    assert!(learned != compiled);
    // Reset: a new store over the same flash, the compiled-in model.
    let flash = store.into_inner();
    let mut store = Persist::<Ram, N>::new(flash, SHAPE, identity).unwrap();
    let mut model = make();
    match store.restore(&mut model).unwrap() {
        Restored::From(l) => assert_eq!((l.slot, l.seq, l.train_steps), (0, 1, 500)),
        Restored::None => panic!("nothing restored"),
    }
    let restored = adapted(&model);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&restored), bits(&learned));
    // And it labels as the model before the reset did.
    let mut before = make();
    before.set_adapted(&learned).unwrap();
    let mut w1 = vec![0.0f32; SHAPE.work_len()];
    let mut w2 = vec![0.0f32; SHAPE.work_len()];
    for x in &stream(9, 40, DRIFTED) {
        let (a, b) = (
            model.segment(x, &mut w1).unwrap(),
            before.segment(x, &mut w2).unwrap(),
        );
        assert_eq!((a.label, a.cosine.to_bits()), (b.label, b.cosine.to_bits()));
    }
}

#[test]
fn f32_model_survives_a_reset() {
    survives_a_reset(f32_model, f32_crc());
}

#[test]
fn int8_model_survives_a_reset() {
    survives_a_reset(int8_model, int8_blob().crc);
}

#[test]
fn a_corrupt_slot_falls_back_to_the_other() {
    let mut model = f32_model();
    let mut store = Persist::<Ram, N>::new(blank(2), SHAPE, f32_crc()).unwrap();
    let learner = learn(&mut model, &stream(3, 300, DRIFTED), settings(u32::MAX));
    store.save(&model, learner.windows()).unwrap();
    let first = adapted(&model);
    learn(&mut model, &stream(4, 300, DRIFTED), settings(u32::MAX));
    let saved = store.save(&model, 600).unwrap();
    assert_eq!((saved.slot, saved.seq), (1, 2));
    // A bit flipped in the newest slot's values (second page).
    let mut flash = store.into_inner();
    flash.bytes_mut()[4096 + 60] ^= 0x10;
    let mut store = Persist::<Ram, N>::new(flash, SHAPE, f32_crc()).unwrap();
    let mut fresh = f32_model();
    match store.restore(&mut fresh).unwrap() {
        Restored::From(l) => assert_eq!((l.slot, l.seq), (0, 1)),
        Restored::None => panic!("the intact slot was not restored"),
    }
    assert_eq!(adapted(&fresh), first);
    // Both slots damaged: the compiled-in model, unchanged.
    let mut flash = store.into_inner();
    flash.bytes_mut()[60] ^= 0x10;
    let mut store = Persist::<Ram, N>::new(flash, SHAPE, f32_crc()).unwrap();
    let mut fresh = f32_model();
    assert_eq!(store.restore(&mut fresh).unwrap(), Restored::None);
    assert_eq!(adapted(&fresh), adapted(&f32_model()));
}

#[test]
fn another_models_checkpoint_is_not_restored() {
    let mut model = f32_model();
    learn(&mut model, &stream(3, 300, DRIFTED), settings(u32::MAX));
    let mut store = Persist::<Ram, N>::new(blank(2), SHAPE, f32_crc()).unwrap();
    store.save(&model, 300).unwrap();
    let flash = store.into_inner();
    // Same shape, other weights (the int8 model's identity, or a retrained model).
    let mut store = Persist::<Ram, N>::new(flash, SHAPE, int8_blob().crc).unwrap();
    let mut fresh = f32_model();
    assert_eq!(store.restore(&mut fresh).unwrap(), Restored::None);
    assert_eq!(adapted(&fresh), adapted(&f32_model()));
    // Another shape (five clusters: a longer segmenter), same identity.
    const OTHER: Shape = Shape::new(12, &[16], 3, 5).checked();
    const NO: usize = 2 * OTHER.input + OTHER.segmenter_len();
    let flash = store.into_inner();
    let mut store = Persist::<Ram, NO>::new(flash, OTHER, f32_crc()).unwrap();
    let mut other = Model::new(OTHER, vec![0.5f32; OTHER.inference_param_len()]).unwrap();
    let before = adapted_of(&other, NO);
    assert_eq!(store.restore(&mut other).unwrap(), Restored::None);
    assert_eq!(adapted_of(&other, NO), before);
    // A state of the wrong length is refused at construction.
    assert!(Persist::<Ram, { N + 1 }>::new(blank(2), SHAPE, 0).is_err());
}

fn adapted_of<M: Adaptable>(model: &M, n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    model.adapted(&mut v).unwrap();
    v
}

#[test]
fn a_save_is_due_every_n_windows() {
    let mut model = f32_model();
    let mut learner = Learner::<FEATURES>::new(&model, settings(5)).unwrap();
    let mut work = vec![0.0f32; SHAPE.work_len()];
    let mut due = Vec::new();
    for (i, x) in stream(3, 12, TRUE).iter().enumerate() {
        learner.step(&mut model, x, &mut work).unwrap();
        if learner.save_due() {
            due.push(i + 1);
            learner.saved();
        }
    }
    assert_eq!(due, vec![5, 10]);
    assert_eq!(learner.windows(), 12);
    // A non-finite window changes nothing and is not counted.
    let before = adapted(&model);
    let mut bad = stream(3, 1, TRUE)[0];
    bad[4] = f32::NAN;
    assert!(learner.step(&mut model, &bad, &mut work).is_err());
    assert_eq!(adapted(&model), before);
    assert_eq!(learner.windows(), 12);
}
