//! `hvae demo`: the README's main job on the bundled digits.

use super::outln;
use super::{eval, export, train};
use crate::Error;
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae demo --help`).
pub const LONG_ABOUT: &str = "The main job on the bundled data set (scikit-learn's 8x8 digits, \
    1797 x 64, 10 classes): train a model with the defaults, score it against k-means and \
    spherical k-means on the same data, and export it as a blob, a Rust source file and a \
    C header, all into --out-dir. Prints each step's result.";

/// The bundled digits (CSV, gzipped, with a `label` column).
pub fn bundled_digits() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv.gz"))
}

/// Arguments of `hvae demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the model, report and exports go.
    #[arg(long, default_value = "target/hvae-demo", value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Seed of training.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `hvae demo`.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<(), Error> {
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| Error::Failed(format!("cannot create {}: {e}", args.out_dir.display())))?;
    let data = bundled_digits();
    let model = args.out_dir.join("digits.hvae");
    outln!(
        out,
        "== 1. train on {} (defaults, seed {})",
        data.display(),
        args.seed
    )?;
    let train_args = train::TrainArgs {
        data: data.clone(),
        clusters: 10,
        out: model.clone(),
        latent: 16,
        hidden: vec![32],
        posterior: train::PosteriorArg::Power,
        likelihood: train::LikelihoodArg::Gaussian,
        activation: train::ActivationArg::Relu,
        epochs: 100,
        warmup: 20,
        batch: 64,
        lr: 2e-3,
        seed: args.seed,
        gamma: 6.0,
        eta: 2.0,
        beta: 1.0,
        neighbours: 10,
        supervised: false,
        report: Some(args.out_dir.join("report.json")),
        quiet: args.quiet,
    };
    train::run(&train_args, out)?;
    outln!(out, "\n== 2. evaluate against the baselines")?;
    eval::run(
        &eval::EvalArgs {
            model: model.clone(),
            data,
            json: false,
            seed: 0,
            restarts: 10,
        },
        out,
    )?;
    outln!(out, "\n== 3. export for the firmware")?;
    for (format, file) in [
        (crate::export::Format::Bin, "digits.bin"),
        (crate::export::Format::Rust, "digits_model.rs"),
        (crate::export::Format::C, "digits_model.h"),
    ] {
        export::run(
            &export::ExportArgs {
                model: model.clone(),
                format,
                out: args.out_dir.join(file),
            },
            out,
        )?;
    }
    Ok(())
}
