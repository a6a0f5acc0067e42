//! `hvae train`: fit a model on a data file.

use super::outln;
use crate::data::{self, Dataset};
use crate::metrics;
use crate::model_io;
use crate::train::{fit, FitConfig};
use crate::Error;
use hvae::shape::{Activation, Likelihood, Posterior, Shape};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae train --help`).
pub const LONG_ABOUT: &str = "Train a model on a data file.\n\n\
    The input normalisation (per-feature mean and scale) is fitted on the data and stored \
    in the model. The cluster loss pairs every sample with one of its nearest neighbours \
    (cosine on the raw features), mined over the whole file. Schedule: --warmup epochs of \
    the VAE alone, then the centres are initialised by spherical k-means++ on the encoder's \
    mean directions, then joint training. A `label` column is never used for training \
    unless --supervised; when present it is used to report ACC and NMI as training goes.\n\n\
    The defaults (latent 16, hidden 32, Power Spherical posterior, 100 epochs, batch 64) \
    give ACC 0.90 / NMI 0.86 on the bundled digits (mean of 5 seeds). The same seed gives \
    the same model, bit for bit. The model file is written atomically.";

/// Posterior family on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PosteriorArg {
    /// von Mises-Fisher.
    Vmf,
    /// Power Spherical.
    Power,
}

/// Likelihood on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LikelihoodArg {
    /// Gaussian on the normalised inputs.
    Gaussian,
    /// Bernoulli on the raw inputs (values in [0, 1]).
    Bernoulli,
}

/// Activation on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ActivationArg {
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
}

/// Arguments of `hvae train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Data file: CSV with a header (plain or .gz) or a 2-D float .npy array.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Number of clusters K.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=255))]
    pub clusters: u32,
    /// Output model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub out: PathBuf,
    /// Ambient latent size M (directions on the sphere S^{M-1}).
    #[arg(long, default_value_t = 16, value_name = "M", value_parser = clap::value_parser!(u32).range(2..=64))]
    pub latent: u32,
    /// Hidden layer widths, comma-separated (1 to 4 layers).
    #[arg(
        long,
        default_value = "32",
        value_name = "H[,H2]",
        value_delimiter = ','
    )]
    pub hidden: Vec<usize>,
    /// Posterior family.
    #[arg(long, value_enum, default_value_t = PosteriorArg::Power)]
    pub posterior: PosteriorArg,
    /// Decoder likelihood.
    #[arg(long, value_enum, default_value_t = LikelihoodArg::Gaussian)]
    pub likelihood: LikelihoodArg,
    /// Hidden nonlinearity.
    #[arg(long, value_enum, default_value_t = ActivationArg::Relu)]
    pub activation: ActivationArg,
    /// Epochs (warm-up included).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub epochs: usize,
    /// Warm-up epochs (VAE alone) before the centres are initialised.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub warmup: usize,
    /// Rows per step (half anchors, half their neighbours).
    #[arg(long, default_value_t = 64, value_name = "B", value_parser = clap::value_parser!(u32).range(2..=128))]
    pub batch: u32,
    /// Adam learning rate.
    #[arg(long, default_value_t = 2e-3, value_name = "LR")]
    pub lr: f32,
    /// Seed of every random number.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Weight of the cluster loss (gamma).
    #[arg(long, default_value_t = 6.0)]
    pub gamma: f32,
    /// Weight of the balance term (eta).
    #[arg(long, default_value_t = 2.0)]
    pub eta: f32,
    /// Weight of the KL term (beta).
    #[arg(long, default_value_t = 1.0)]
    pub beta: f32,
    /// Neighbours a partner is drawn from.
    #[arg(long, default_value_t = 10)]
    pub neighbours: usize,
    /// Train with the `label` column (cross-entropy on labelled rows).
    #[arg(long)]
    pub supervised: bool,
    /// Write the per-epoch training curves (loss parts, ACC/NMI with labels) as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Loss parts of one epoch, as written in the report.
#[derive(Clone, Debug, Serialize)]
pub struct LossReport {
    /// Total.
    pub total: f32,
    /// Reconstruction.
    pub recon: f32,
    /// KL to the prior.
    pub kl: f32,
    /// Neighbour consistency.
    pub consistency: f32,
    /// Mean per-sample entropy.
    pub entropy: f32,
    /// Entropy of the marginal.
    pub balance: f32,
    /// Cross-entropy on labelled rows.
    pub supervised: f32,
}

/// One epoch of the report.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Warm-up epoch.
    pub warmup: bool,
    /// Mean loss parts.
    pub loss: LossReport,
    /// ACC with labels.
    pub acc: Option<f64>,
    /// NMI with labels.
    pub nmi: Option<f64>,
}

/// The `--report` file.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Data file.
    pub data: String,
    /// Rows trained on.
    pub n: usize,
    /// Architecture.
    pub shape: ShapeReport,
    /// Seed.
    pub seed: u64,
    /// Wall-clock seconds of training.
    pub seconds: f64,
    /// Per-epoch curves.
    pub epochs: Vec<EpochReport>,
    /// Final scores with labels.
    pub final_scores: Option<metrics::Scores>,
    /// CRC of the written model.
    pub crc: u32,
}

/// The architecture, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct ShapeReport {
    /// Inputs D.
    pub input: usize,
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Latent M.
    pub latent: usize,
    /// Clusters K.
    pub clusters: usize,
    /// Posterior.
    pub posterior: String,
    /// Likelihood.
    pub likelihood: String,
    /// Activation.
    pub activation: String,
}

/// The shape the arguments ask for, for data with `d` features.
pub fn shape_of(args: &TrainArgs, d: usize) -> Result<Shape, Error> {
    let shape = Shape::new(
        d,
        &args.hidden,
        args.latent as usize,
        args.clusters as usize,
    )
    .with_posterior(match args.posterior {
        PosteriorArg::Vmf => Posterior::VonMisesFisher,
        PosteriorArg::Power => Posterior::PowerSpherical,
    })
    .with_likelihood(match args.likelihood {
        LikelihoodArg::Gaussian => Likelihood::Gaussian,
        LikelihoodArg::Bernoulli => Likelihood::Bernoulli,
    })
    .with_activation(match args.activation {
        ActivationArg::Relu => Activation::Relu,
        ActivationArg::Tanh => Activation::Tanh,
    });
    shape
        .validate()
        .map_err(|e| Error::BadInput(format!("invalid architecture: {e}")))?;
    Ok(shape)
}

/// Maps the data's labels to class indices `0..C` (sorted label values), checking that
/// `C <= K`.
pub fn class_indices(data: &Dataset, k: usize) -> Result<Option<Vec<u8>>, Error> {
    let Some(labels) = data.labels() else {
        return Ok(None);
    };
    let mut values: Vec<i64> = labels.to_vec();
    values.sort_unstable();
    values.dedup();
    if values.len() > k {
        return Err(Error::BadInput(format!(
            "the label column has {} classes but --clusters is {k}: use --clusters {} or more",
            values.len(),
            values.len()
        )));
    }
    Ok(Some(
        labels
            .iter()
            .map(|l| values.partition_point(|v| v < l) as u8)
            .collect(),
    ))
}

/// Runs `hvae train`.
pub fn run(args: &TrainArgs, out: &mut dyn Write) -> Result<(), Error> {
    let data = data::load(&args.data)?;
    let k = args.clusters as usize;
    if data.len() < k {
        return Err(Error::BadInput(format!(
            "--clusters {k} is more than the {} rows of {}",
            data.len(),
            args.data.display()
        )));
    }
    if args.warmup >= args.epochs {
        return Err(Error::BadInput(format!(
            "--warmup {} must be below --epochs {}",
            args.warmup, args.epochs
        )));
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        return Err(Error::BadInput("--lr must be a positive number".into()));
    }
    let shape = shape_of(args, data.dim())?;
    let classes = class_indices(&data, k)?;
    if args.supervised && classes.is_none() {
        return Err(Error::BadInput(format!(
            "--supervised needs a '{}' column in {}",
            data::LABEL_COLUMN,
            args.data.display()
        )));
    }
    let mut cfg = FitConfig {
        epochs: args.epochs,
        warmup_epochs: args.warmup,
        batch: args.batch as usize,
        lr: args.lr,
        seed: args.seed,
        neighbours: args.neighbours.max(1),
        supervised: args.supervised,
        ..FitConfig::default()
    };
    cfg.loss.gamma = args.gamma;
    cfg.loss.eta = args.eta;
    cfg.loss.beta = args.beta;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(args.epochs as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} epoch {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let mut epochs = Vec::with_capacity(args.epochs);
    let start = std::time::Instant::now();
    let model = fit(
        shape,
        data.features(),
        classes.as_deref(),
        &cfg,
        |s, model| {
            let (acc, nmi) = match &classes {
                Some(truth) => {
                    let pred = predict(model, &data);
                    let sc = metrics::scores(truth, &pred);
                    (Some(sc.acc), Some(sc.nmi))
                }
                None => (None, None),
            };
            let l = s.loss;
            let mut msg = format!(
                "loss {:.3} (recon {:.3} kl {:.3} cons {:.3} bal {:.3})",
                l.total, l.recon, l.kl, l.consistency, l.balance
            );
            if let (Some(a), Some(n)) = (acc, nmi) {
                msg.push_str(&format!(" ACC {a:.3} NMI {n:.3}"));
            }
            if s.warmup {
                msg.push_str(" [warm-up]");
            }
            bar.set_message(msg);
            bar.inc(1);
            epochs.push(EpochReport {
                epoch: s.epoch,
                warmup: s.warmup,
                loss: LossReport {
                    total: l.total,
                    recon: l.recon,
                    kl: l.kl,
                    consistency: l.consistency,
                    entropy: l.entropy,
                    balance: l.balance,
                    supervised: l.supervised,
                },
                acc,
                nmi,
            });
        },
    )
    .map_err(|e| Error::Failed(format!("training failed: {e}")))?;
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let crc = model_io::save(&args.out, &model).map_err(|e| Error::Failed(e.to_string()))?;
    let final_scores = classes
        .as_ref()
        .map(|truth| metrics::scores(truth, &predict(&model, &data)));
    outln!(
        out,
        "trained {} on {} rows x {} features in {seconds:.2} s: wrote {} (CRC {crc:#010x})",
        describe(&shape),
        data.len(),
        data.dim(),
        args.out.display()
    )?;
    if let Some(s) = &final_scores {
        outln!(out, "ACC {:.4}  NMI {:.4}  ARI {:.4}", s.acc, s.nmi, s.ari)?;
    }
    if let Some(path) = &args.report {
        let report = TrainReport {
            data: args.data.display().to_string(),
            n: data.len(),
            shape: ShapeReport {
                input: shape.input,
                hidden: (0..shape.depth()).map(|l| shape.hidden(l)).collect(),
                latent: shape.latent,
                clusters: shape.clusters,
                posterior: crate::export::posterior_name(shape.posterior).into(),
                likelihood: crate::export::likelihood_name(shape.likelihood).into(),
                activation: crate::export::activation_name(shape.activation).into(),
            },
            seed: args.seed,
            seconds,
            epochs,
            final_scores,
            crc,
        };
        let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Failed(e.to_string()))?;
        crate::fsio::write_bytes_atomic(path, &json)?;
    }
    Ok(())
}

/// The model's label for every row (a row it cannot encode gets cluster 0).
pub fn predict<S: AsRef<[f32]>>(model: &hvae::model::Model<f32, S>, data: &Dataset) -> Vec<usize> {
    let mut work = vec![0f32; model.shape().work_len()];
    data.rows()
        .map(|r| model.segment(r, &mut work).map(|s| s.label).unwrap_or(0))
        .collect()
}

/// `64-32-16 (K = 10, power, gaussian, relu)`.
pub fn describe(s: &Shape) -> String {
    let hidden: Vec<String> = (0..s.depth()).map(|l| s.hidden(l).to_string()).collect();
    format!(
        "{}-{}-{} (K = {}, {}, {}, {})",
        s.input,
        hidden.join("-"),
        s.latent,
        s.clusters,
        crate::export::posterior_name(s.posterior),
        crate::export::likelihood_name(s.likelihood),
        crate::export::activation_name(s.activation)
    )
}
