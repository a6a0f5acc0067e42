//! The layer-wise backward pass and update (`TrainConfig::layerwise`,
//! `hvae::train::loss::layerwise_update`) against the two-pass form (the whole gradient,
//! then the optimiser): without clipping, the same parameters and optimiser state bit for
//! bit after every step, through the warm-up, the centre initialisation and joint
//! training; with less scratch storage; and each block clipped by its own norm.

use hvae::shape::{Activation, Scope, Shape};
use hvae::train::loss::{
    block_len, flow_width, layerwise_loss, layerwise_update, loss_and_grad, Batch, ClusterInput,
    FlatRows, LossBuffers, LossConfig, RandomDraws,
};
use hvae::train::optim::{state_len, OptimConfig, OptimState, Optimiser};
use hvae::train::trainer::{Consistency, OnlineTrainer, TrainConfig};
use hvae::Model;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const D: usize = 6;
const CAP: usize = 40;

type Trainer = OnlineTrainer<f32, D, CAP, Vec<f32>, Vec<f32>>;

/// A deterministic stream of `n` samples: three blobs in `D` dimensions.
fn stream(n: usize) -> Vec<[f32; D]> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    (0..n)
        .map(|i| {
            let mut x = [0.0f32; D];
            for (q, v) in x.iter_mut().enumerate() {
                let centre = if q % 3 == i % 3 { 2.0 } else { -0.5 };
                *v = centre + 0.3 * hvae::dist::rng::standard_normal::<f32, _>(&mut rng);
            }
            x
        })
        .collect()
}

fn model(shape: Shape, seed: u64) -> Model<f32, Vec<f32>> {
    let mut m = Model::<f32, Vec<f32>>::new(shape, vec![0.0; shape.param_len()]).unwrap();
    m.init(&mut Xoshiro256PlusPlus::seed_from_u64(seed));
    m
}

/// Trains `steps` steps with `cfg` (layer-wise or not), the same stream and seeds;
/// returns the parameters, the optimiser state and the scratch length after every step.
fn run(shape: Shape, cfg: TrainConfig<f32>, steps: usize) -> (Vec<Vec<f32>>, Vec<f32>, usize) {
    let mut model = model(shape, 3);
    let scratch = vec![0.0; cfg.scratch_len(&shape, CAP)];
    let len = scratch.len();
    let optim =
        vec![0.0; TrainConfig::<f32>::optim_len(&shape, cfg.scope, cfg.optim.optimiser.kind())];
    let mut trainer = Trainer::new(&shape, cfg, scratch, optim).unwrap();
    let xs = stream(CAP + steps);
    for x in &xs[..CAP / 2] {
        trainer.push(x).unwrap();
    }
    trainer.fit_normalisation(&mut model).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut params = Vec::new();
    for x in &xs[CAP / 2..CAP / 2 + steps] {
        trainer.push(x).unwrap();
        let r = trainer
            .step(&mut model, &mut rng)
            .unwrap_or_else(|e| panic!("step {}: {e:?}", params.len()));
        assert!(r.loss.total.is_finite() && r.grad_norm > 0.0);
        params.push(model.params().to_vec());
    }
    let state = trainer.optimiser().storage().clone();
    (params, state, len)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The two forms with `optimiser`, no clipping, on `shape` and `scope`.
fn same_bits(shape: Shape, scope: Scope, optimiser: Optimiser<f32>, input: ClusterInput) {
    same_bits_init(shape, scope, optimiser, input, CAP);
}

/// [`same_bits`] with the centres initialised on `init` samples.
fn same_bits_init(
    shape: Shape,
    scope: Scope,
    optimiser: Optimiser<f32>,
    input: ClusterInput,
    init: usize,
) {
    let mut cfg = TrainConfig::new(1e-2f32);
    cfg.init_samples = init;
    cfg.optim = OptimConfig::new(optimiser).with_weight_decay(1e-4);
    cfg.scope = scope;
    cfg.batch = 4;
    cfg.warmup_steps = 6;
    cfg.loss.cluster_input = input;
    cfg.loss.entropy = 0.1;
    cfg.input_clip = 1.2;
    let (two_pass, state_a, len_a) = run(shape, cfg, 20);
    cfg.layerwise = true;
    let (layerwise, state_b, len_b) = run(shape, cfg, 20);
    for (step, (a, b)) in two_pass.iter().zip(&layerwise).enumerate() {
        assert_eq!(
            bits(a),
            bits(b),
            "parameters differ after step {}",
            step + 1
        );
    }
    assert_eq!(bits(&state_a), bits(&state_b));
    // The parameters moved, and the layer-wise trainer holds the largest block's gradient
    // and a flow row per batch row in place of the scope's gradient: less when the scope
    // is the whole network.
    assert_ne!(bits(&two_pass[0]), bits(&two_pass[19]));
    // The centre initialisation's buffers share the block buffer when they fit there.
    let rows = 2 * cfg.batch;
    let n = shape.scope_range(scope).len();
    let (m, k) = (shape.latent, shape.clusters);
    let kmeans = init * m + k * m + k * (m + 1);
    let shared = if kmeans <= block_len(&shape) {
        kmeans
    } else {
        0
    };
    // No copy of the batch's rows but one row to load them into.
    let batch_rows = rows * D - D;
    let saved =
        (n + batch_rows + shared) as i64 - (block_len(&shape) + rows * flow_width(&shape)) as i64;
    assert_eq!(len_a as i64 - len_b as i64, saved);
    if scope == Scope::Full {
        assert!(len_b < len_a);
    }
}

#[test]
fn layerwise_equals_the_two_pass_update_kmeans_in_the_block_buffer() {
    let shape = Shape::new(D, &[12], 3, 3);
    assert!(8 * 3 + 9 + 12 <= block_len(&shape));
    same_bits_init(
        shape,
        Scope::Full,
        Optimiser::adam(1e-2),
        ClusterInput::Mean,
        8,
    );
}

#[test]
fn layerwise_sgd_and_adam_equal_the_two_pass_update() {
    let shape = Shape::new(D, &[5], 3, 3);
    for optimiser in [Optimiser::sgd(1e-2, 0.9), Optimiser::adam(1e-2)] {
        same_bits(shape, Scope::Full, optimiser, ClusterInput::Mean);
    }
}

#[test]
fn layerwise_factored_equals_the_two_pass_update() {
    // Each block holds whole weight matrices, so the factored second moment of a
    // layer-wise step is the whole step's.
    let shape = Shape::new(D, &[5], 3, 3);
    for optimiser in [Optimiser::factored(1e-2), Optimiser::factored_rms(1e-2)] {
        same_bits(shape, Scope::Full, optimiser, ClusterInput::Mean);
    }
    let two = Shape::new(D, &[7, 4], 3, 3).with_activation(Activation::Tanh);
    same_bits(
        two,
        Scope::Full,
        Optimiser::factored(1e-2),
        ClusterInput::Draw,
    );
}

#[test]
fn layerwise_bands_of_the_outer_layers_equal_the_two_pass_update() {
    // The encoder's input layer (180x6: bands of 170 and 10 rows) and the decoder's
    // output layer (6x180: bands of 5 rows and of 1, a vector to the optimiser) are
    // updated band by band; the block buffer holds the largest band and a bias, less
    // than either layer.
    let shape = Shape::new(D, &[180, 4], 3, 3).with_activation(Activation::Tanh);
    assert_eq!(block_len(&shape), 170 * 6 + 180);
    assert!(block_len(&shape) < 180 * 6 + 180);
    for (optimiser, input) in [
        (Optimiser::factored_rms(1e-2), ClusterInput::Mean),
        (Optimiser::factored(1e-2), ClusterInput::Draw),
        (Optimiser::adam(1e-2), ClusterInput::Mean),
        (Optimiser::sgd(1e-2, 0.9), ClusterInput::Draw),
    ] {
        same_bits(shape, Scope::Full, optimiser, input);
    }
    // One hidden layer: the decoder's output layer sends the flow to the latent.
    let one = Shape::new(D, &[200], 3, 3);
    assert_eq!(block_len(&one), 170 * 6 + 200);
    same_bits(
        one,
        Scope::Full,
        Optimiser::factored_rms(1e-2),
        ClusterInput::Mean,
    );
    // The decoder frozen: its output layer is gone through once, without bands.
    same_bits(
        shape,
        Scope::EncoderAndSegmenter,
        Optimiser::factored_rms(1e-2),
        ClusterInput::Mean,
    );
}

#[test]
fn layerwise_equals_the_two_pass_update_two_hidden_layers_tanh_draw() {
    let shape = Shape::new(D, &[7, 4], 3, 3).with_activation(Activation::Tanh);
    for (optimiser, input) in [
        (Optimiser::adam(1e-2), ClusterInput::Draw),
        (Optimiser::sgd(1e-2, 0.5), ClusterInput::Mean),
    ] {
        same_bits(shape, Scope::Full, optimiser, input);
    }
}

#[test]
fn layerwise_equals_the_two_pass_update_decoder_frozen() {
    let shape = Shape::new(D, &[7, 4], 3, 3).with_activation(Activation::Tanh);
    let before = model(shape, 3);
    same_bits(
        shape,
        Scope::EncoderAndSegmenter,
        Optimiser::sgd(1e-2, 0.9),
        ClusterInput::Mean,
    );
    // (`same_bits` checks both forms agree; here, that the decoder is left as it was.)
    let mut cfg = TrainConfig::new(1e-2f32);
    cfg.scope = Scope::EncoderAndSegmenter;
    cfg.batch = 4;
    cfg.warmup_steps = 2;
    cfg.layerwise = true;
    let (params, _, _) = run(shape, cfg, 5);
    let dec = shape.decoder_offset();
    let last = params.last().unwrap();
    assert_eq!(bits(&last[dec..]), bits(&before.params()[dec..]));
    assert_ne!(bits(&last[..dec]), bits(&before.params()[..dec]));
}

#[test]
fn segmenter_only_and_noisy_partners_are_refused_layerwise() {
    let shape = Shape::new(D, &[5], 3, 3);
    let mut only = TrainConfig::new(1e-2f32);
    only.scope = Scope::SegmenterOnly;
    let mut noise = TrainConfig::new(1e-2f32);
    noise.consistency = Consistency::Noise(0.1);
    for mut cfg in [only, noise] {
        let scratch = vec![0.0; cfg.scratch_len(&shape, CAP)];
        let optim =
            vec![0.0; TrainConfig::<f32>::optim_len(&shape, cfg.scope, cfg.optim.optimiser.kind())];
        assert!(Trainer::new(&shape, cfg, scratch.clone(), optim.clone()).is_ok());
        cfg.layerwise = true;
        assert!(Trainer::new(&shape, cfg, scratch, optim).is_err());
    }
}

/// The kernels alone: one batch, `loss_and_grad` + `OptimState::step` against
/// `layerwise_loss` + `layerwise_update`; with a clip, each block clipped by its own
/// norm (reconstructed here from the two-pass gradient).
#[test]
fn one_step_kernels_and_per_block_clip() {
    let shape = Shape::new(D, &[5], 3, 3);
    let scope = Scope::Full;
    let xs = stream(8);
    let inputs: Vec<f32> = xs.iter().flatten().copied().collect();
    let pairs = [(0u16, 4u16), (1, 5), (2, 6), (3, 7)];
    let batch = Batch {
        inputs: &inputs,
        labels: &[],
        pairs: &pairs,
    };
    let cfg = LossConfig::<f32>::default();
    let rows = 8;
    let n = shape.scope_range(scope).len();
    for clip in [None, Some(0.05f32)] {
        let mut ocfg = OptimConfig::new(Optimiser::sgd(0.1, 0.9));
        ocfg.clip_norm = clip;
        // Two-pass.
        let mut a = model(shape, 5);
        let mut store = vec![0.0; LossBuffers::<f32>::storage_len(&shape, scope, rows)];
        let mut bufs = LossBuffers::new(&shape, scope, rows, &mut store).unwrap();
        bufs.marginal_mut().fill(1.0 / 3.0);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let pa = loss_and_grad(&a, &batch, &cfg, &mut RandomDraws(&mut rng), &mut bufs).unwrap();
        let grads = bufs.grads().to_vec();
        let mut sa = OptimState::new(vec![0.0f32; state_len(ocfg.optimiser.kind(), n)]);
        let range = shape.scope_range(scope);
        if clip.is_none() {
            sa.step(&ocfg, &mut a.params_mut()[range.clone()], &grads)
                .unwrap();
        } else {
            // Each block (the layout's dense layers, and the heads with the segmenter)
            // by its own norm.
            let (m, h) = (shape.latent, shape.last_hidden());
            let head = shape.segmenter_offset() - (m * h + m + h + 1);
            let bounds = [
                range.start,
                shape.encoder_offset() + 5 * D + 5,
                head,
                shape.decoder_offset(),
                shape.decoder_offset() + 5 * 3 + 5,
                range.end,
            ];
            assert_eq!(bounds[1], head);
            for w in bounds.windows(2).filter(|w| w[0] < w[1]) {
                let g = &grads[w[0] - range.start..w[1] - range.start];
                sa.step_part(
                    &ocfg,
                    &mut a.params_mut()[w[0]..w[1]],
                    g,
                    w[0] - range.start,
                    n,
                )
                .unwrap();
            }
            sa.finish_parts();
        }
        // Layer-wise.
        let mut b = model(shape, 5);
        let mut store = vec![0.0; LossBuffers::<f32>::storage_len_layerwise(&shape, scope, rows)];
        let mut bufs = LossBuffers::layerwise(&shape, scope, rows, &mut store).unwrap();
        bufs.marginal_mut().fill(1.0 / 3.0);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let flat = FlatRows {
            data: &inputs,
            width: D,
        };
        let lw = (&flat, &batch);
        let pb = layerwise_loss(&b, lw, &cfg, &mut RandomDraws(&mut rng), &mut bufs).unwrap();
        assert_eq!(pa, pb);
        let mut sb = OptimState::new(vec![0.0f32; state_len(ocfg.optimiser.kind(), n)]);
        let info = layerwise_update(&mut b, lw, &cfg, &mut bufs, &mut sb, &ocfg).unwrap();
        assert_eq!(bits(a.params()), bits(b.params()), "clip {clip:?}");
        assert_eq!(bits(sa.storage()), bits(sb.storage()));
        assert_eq!((sa.steps(), sb.steps()), (1, 1));
        let norm = grads.iter().map(|g| g * g).sum::<f32>().sqrt();
        assert!(
            (info.grad_norm - norm).abs() <= 1e-4 * norm,
            "{} {norm}",
            info.grad_norm
        );
        assert_eq!(info.clipped, clip.is_some());
        assert_ne!(bits(a.params()), bits(model(shape, 5).params()));
    }
}
