//! Host speed of the core on the digits-sized model (64 inputs, hidden 32, latent 8,
//! K = 10): one encode+segment, a batch of them, and one training step per sample for
//! each posterior (and with the batch kernels, `LossBuffers::with_batch_kernels`, as
//! the host's trainer runs it).
//! Run: `cargo bench -p hvae --bench core`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hvae::shape::{Posterior, Scope, Shape};
use hvae::train::loss::{loss_and_grad, Batch, LossBuffers, LossConfig, RandomDraws};
use hvae::train::optim::{state_len, OptimConfig, OptimState, Optimiser};
use hvae::Model;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use std::hint::black_box;

const DIGITS: Shape = Shape::new(64, &[32], 8, 10);
const B: usize = 64;

fn inputs(n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
    (0..n * 64)
        .map(|_| hvae::dist::rng::uniform::<f32, _>(rng))
        .collect()
}

fn bench_inference(c: &mut Criterion) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut model = Model::<f32, Vec<f32>>::new(DIGITS, vec![0.0; DIGITS.param_len()]).unwrap();
    model.init(&mut rng);
    let x = inputs(1, &mut rng);
    let mut work = vec![0.0f32; DIGITS.work_len()];
    let mut g = c.benchmark_group("inference");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode+segment (digits model)", |b| {
        b.iter(|| black_box(model.segment(black_box(&x), &mut work).unwrap().label))
    });
    g.finish();
    // A batch of B samples, two at a time through the encoder (two workspaces).
    let xs = inputs(B, &mut rng);
    let mut work2 = vec![0.0f32; 2 * DIGITS.work_len()];
    let mut g = c.benchmark_group("inference");
    g.throughput(Throughput::Elements(B as u64));
    g.bench_function("encode+segment batch of 64 (digits model)", |b| {
        b.iter(|| {
            let mut labels = 0usize;
            model
                .segment_batch(black_box(&xs), &mut work2, |_, s| {
                    labels += s.map_or(0, |s| s.label)
                })
                .unwrap();
            black_box(labels)
        })
    });
    g.finish();
}

fn bench_training(c: &mut Criterion) {
    let mut g = c.benchmark_group("training step");
    g.throughput(Throughput::Elements(B as u64));
    let cases = [
        (Posterior::VonMisesFisher, false),
        (Posterior::PowerSpherical, false),
        (Posterior::PowerSpherical, true),
    ];
    for (posterior, transposed) in cases {
        let shape = DIGITS.with_posterior(posterior);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let mut model = Model::<f32, Vec<f32>>::new(shape, vec![0.0; shape.param_len()]).unwrap();
        model.init(&mut rng);
        let x = inputs(B, &mut rng);
        let pairs: Vec<(u16, u16)> = (0..B as u16 / 2).map(|i| (i, i + B as u16 / 2)).collect();
        let cfg = LossConfig::default();
        let range = shape.scope_range(Scope::Full);
        let opt = OptimConfig::new(Optimiser::adam(1e-3f32));
        let mut state = OptimState::new(vec![0.0f32; state_len(opt.optimiser.kind(), range.len())]);
        let (mut store, mut bufs);
        let name = if transposed {
            store =
                vec![0.0; LossBuffers::<f32>::storage_len_batch_kernels(&shape, Scope::Full, B)];
            bufs = LossBuffers::with_batch_kernels(&shape, Scope::Full, B, &mut store).unwrap();
            format!("{posterior:?}, Full + Adam, batch {B}, batch kernels (as the host trains)")
        } else {
            store = vec![0.0; LossBuffers::<f32>::storage_len(&shape, Scope::Full, B)];
            bufs = LossBuffers::new(&shape, Scope::Full, B, &mut store).unwrap();
            format!("{posterior:?}, Full + Adam, batch {B} (per batch; throughput per sample)")
        };
        bufs.marginal_mut().fill(0.1);
        g.bench_function(name, |b| {
            b.iter_batched(
                || (),
                |_| {
                    let batch = Batch {
                        inputs: &x,
                        labels: &[],
                        pairs: &pairs,
                    };
                    loss_and_grad(&model, &batch, &cfg, &mut RandomDraws(&mut rng), &mut bufs)
                        .unwrap();
                    state
                        .step(&opt, &mut model.params_mut()[range.clone()], bufs.grads())
                        .unwrap();
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One adapter step (segmenter only, encoder frozen; batch 8 anchors + 8 neighbours
/// among 64 stored directions), the on-device cluster adaptation.
fn bench_adapter(c: &mut Criterion) {
    use hvae::train::adapt::{adapter_storage_len, SegmenterAdapter};
    use hvae::TrainConfig;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut model = Model::<f32, Vec<f32>>::new(DIGITS, vec![0.0; DIGITS.param_len()]).unwrap();
    model.init(&mut rng);
    let mut cfg = TrainConfig::new(1e-2f32);
    cfg.scope = Scope::SegmenterOnly;
    cfg.init_centres = false;
    let mut adapter: SegmenterAdapter<f32, 8, 64, _, _> = SegmenterAdapter::new(
        &model,
        cfg,
        vec![0.0f32; adapter_storage_len(&DIGITS, cfg.batch)],
        vec![0.0f32; state_len(cfg.optim.optimiser.kind(), DIGITS.segmenter_len())],
    )
    .unwrap();
    let mut work = vec![0.0f32; DIGITS.work_len()];
    for x in inputs(64, &mut rng).chunks(64) {
        adapter.push(&model, x, &mut work).unwrap();
    }
    let mut g = c.benchmark_group("adapter");
    g.throughput(Throughput::Elements(cfg.batch as u64));
    g.bench_function(
        "SegmenterAdapter step, batch 8 (throughput per anchor)",
        |b| {
            b.iter(|| {
                // A guard rejection is a valid outcome too; the cost is the same.
                let _ = black_box(adapter.step(&mut rng));
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench_inference, bench_training, bench_adapter);
criterion_main!(benches);
