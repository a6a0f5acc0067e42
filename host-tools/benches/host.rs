//! Host-side costs: reading the shipped digits, scoring a labelling, the baselines,
//! generating the Rust export, training 100 epochs on the digits (one model, and the
//! two of `hvae train`'s default) and `hvae predict`'s throughput in rows per second. `cargo bench -p hvae-host-tools --bench host`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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
            // All 100 epochs (5140 steps), as this bar counts them: the default bounds
            // the digits' training at `MAX_STEPS`.
            let cfg = hvae_host::train::FitConfig {
                max_steps: 0,
                ..hvae_host::train::FitConfig::default()
            };
            hvae_host::train::fit(shape, d.features(), None, &cfg, |_, _| {}).unwrap()
        })
    });
    // `hvae train`'s default: one model and the GMM candidate from one warm-up, the
    // one kept chosen by neighbour association, within `MAX_STEPS` steps (what
    // `hvae train --data digits.csv.gz --clusters 10` and the quality suite run).
    let args = hvae_host::commands::train::args_with(&path, "10", Path::new("-"), &[]).unwrap();
    g.bench_function("hvae train defaults (with the GMM candidate)", |b| {
        b.iter(|| hvae_host::commands::train::train_on(&args, &d, None).unwrap())
    });
    g.finish();

    predict(c, &d);
}

/// `hvae predict` on the digits with a model trained as `hvae train --clusters 10` does
/// (default architecture and schedule), on one core: the whole command path (gzip, CSV
/// parsing, the batch segmenter, CSV formatting into a sink), the same without gzip and
/// disk (the text in memory), and the core's batch segmenter alone on the parsed rows.
fn predict(c: &mut Criterion, d: &data::Dataset) {
    use hvae_host::commands::predict::{self as p, Format, Hooks, Options, Summary};
    let shape = hvae::Shape::new(64, &[32], 16, 10).with_posterior(hvae::Posterior::PowerSpherical);
    let cfg = hvae_host::train::FitConfig::default();
    let model = hvae_host::train::fit(shape, d.features(), None, &cfg, |_, _| {}).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz");
    let mut text = Vec::new();
    data::write_csv_to(&mut text, d).unwrap();
    let run = |input: &mut dyn std::io::Read| {
        let mut rows = data::RowReader::new(input, "digits", true).unwrap();
        let opts = Options {
            columns: p::resolve_columns(None, false, true, None, Format::Csv, "digits").unwrap(),
            novelty_above: None,
            skip_bad: false,
            chunk: 256,
        };
        let hooks = Hooks {
            chunk: &mut |_: &Summary| {},
            skipped: &mut |_: &str| {},
        };
        let out = std::io::sink();
        let s = p::stream(&model, &mut rows, "digits", &opts, Format::Csv, out, hooks);
        assert_eq!(s.ok().map(|s| s.rows), Some(1797));
    };
    let mut g = c.benchmark_group("predict digits, 1797 rows, one core");
    g.throughput(Throughput::Elements(d.len() as u64));
    g.bench_function("digits.csv.gz -> CSV (the command's path)", |b| {
        b.iter(|| run(&mut std::fs::File::open(black_box(&path)).unwrap()))
    });
    g.bench_function("CSV text in memory -> CSV", |b| {
        b.iter(|| run(&mut black_box(&text[..])))
    });
    let mut work = vec![0f32; 2 * shape.work_len()];
    g.bench_function("segment_batch alone (parsed rows)", |b| {
        b.iter(|| {
            let mut sum = 0usize;
            model
                .segment_batch(black_box(d.features()), &mut work, |_, r| {
                    sum += r.map_or(0, |s| s.label)
                })
                .unwrap();
            sum
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
