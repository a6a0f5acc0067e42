//! Host-side costs: reading the shipped digits, scoring a labelling, the baselines,
//! generating the Rust export and training 100 epochs on the digits. `cargo bench -p hvae-host-tools --bench host`.

use criterion::{criterion_group, criterion_main, Criterion};
use hvae_host::baselines::{self, BaselineConfig};
use hvae_host::{data, metrics};
use std::hint::black_box;
use std::path::Path;

fn digits() -> data::Dataset {
    data::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz")).unwrap()
}

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz");
    c.bench_function("load digits.csv.gz (1797 x 64)", |b| {
        b.iter(|| data::load(black_box(&path)).unwrap())
    });

    let d = digits();
    let truth = d.labels().unwrap().to_vec();
    let pred: Vec<usize> = (0..d.len()).map(|i| (i * 7) % 12).collect();
    c.bench_function("ACC+NMI+ARI, 1797 samples, 10 x 12", |b| {
        b.iter(|| metrics::scores(black_box(&truth), black_box(&pred)))
    });

    let one = BaselineConfig {
        restarts: 1,
        ..BaselineConfig::new(10)
    };
    let mut g = c.benchmark_group("baselines on digits, K = 10, one run");
    g.sample_size(20);
    g.bench_function("k-means (linfa)", |b| {
        b.iter(|| baselines::kmeans(d.features(), d.dim(), &one).unwrap())
    });
    g.bench_function("spherical k-means (core)", |b| {
        b.iter(|| baselines::spherical_kmeans(d.features(), d.dim(), &one).unwrap())
    });
    g.finish();

    // The training-speed bar (< 2 s): 100 epochs on the digits, batch 64, one core.
    let mut g = c.benchmark_group("train digits");
    g.sample_size(10);
    let shape = hvae::Shape::new(64, &[32], 16, 10).with_posterior(hvae::Posterior::PowerSpherical);
    g.bench_function("100 epochs, batch 64, 64-32-16 Power Spherical", |b| {
        b.iter(|| {
            let cfg = hvae_host::train::FitConfig::default();
            hvae_host::train::fit(shape, d.features(), None, &cfg, |_, _| {}).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
