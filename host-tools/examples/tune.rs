//! Tuning harness: trains on the digits with settings from the environment and prints
//! ACC/NMI per epoch. `cargo run --release -p hvae-host-tools --example tune`.
use hvae::shape::{Posterior, Shape};
use hvae_host::train::{fit, FitConfig};

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let data =
        hvae_host::data::load(std::path::Path::new("host-tools/data/digits.csv.gz")).unwrap();
    let labels: Vec<u8> = data.labels().unwrap().iter().map(|&l| l as u8).collect();
    let h: usize = env("H", 32);
    let m: usize = env("M", 16);
    let post = if env("PS", 1) == 1 {
        Posterior::PowerSpherical
    } else {
        Posterior::VonMisesFisher
    };
    let shape = Shape::new(64, &[h], m, 10).with_posterior(post);
    let mut cfg = FitConfig {
        epochs: env("EPOCHS", 100),
        warmup_epochs: env("WARM", 20),
        batch: env("B", 64),
        lr: env("LR", 2e-3),
        seed: env("SEED", 0),
        ..FitConfig::default()
    };
    cfg.loss.gamma = env("GAMMA", 6.0);
    cfg.loss.eta = env("ETA", 2.0);
    cfg.loss.beta = env("BETA", 1.0);
    cfg.loss.sigma = env("SIGMA", 1.0);
    cfg.loss.entropy = env("ENT", 0.0);
    cfg.neighbours = env("NN", 10);
    let every: usize = env("EVERY", 10);
    let t = std::time::Instant::now();
    let model = fit(shape, data.features(), Some(&labels), &cfg, |s, model| {
        if s.epoch % every == 0 {
            let mut work = vec![0.0; model.shape().work_len()];
            let pred: Vec<usize> = data
                .rows()
                .map(|r| model.segment(r, &mut work).map(|s| s.label).unwrap_or(0))
                .collect();
            let sc = hvae_host::metrics::scores(&labels, &pred);
            eprintln!(
                "epoch {} acc {:.3} nmi {:.3} rec {:.2} kl {:.2} cons {:.3} bal {:.3}",
                s.epoch,
                sc.acc,
                sc.nmi,
                s.loss.recon,
                s.loss.kl,
                s.loss.consistency,
                s.loss.balance
            );
        }
    })
    .unwrap();
    let mut work = vec![0.0; model.shape().work_len()];
    let pred: Vec<usize> = data
        .rows()
        .map(|r| model.segment(r, &mut work).unwrap().label)
        .collect();
    let sc = hvae_host::metrics::scores(&labels, &pred);
    println!(
        "final acc {:.4} nmi {:.4} ari {:.4} time {:.2}s",
        sc.acc,
        sc.nmi,
        sc.ari,
        t.elapsed().as_secs_f64()
    );
}
