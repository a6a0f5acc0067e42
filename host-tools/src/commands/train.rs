//! `hvae train`: fit a model on a data file.

use super::inspect::ShapeReport;
use super::outln;
use crate::data::{self, Dataset};
use crate::metrics;
use crate::model_io;
use crate::pca::Projection;
use crate::select::{
    fit_restarts, fit_with_gmm_candidate, Criterion, GmmChoice, Restart, Restarts,
};
use crate::train::{
    default_margin, CentreInit, ChoiceLook, ChoiceScore, FitConfig, FitJob, NeighbourSpace,
    Prepared,
};
use crate::Error;
use hvae::shape::{Activation, Likelihood, Posterior, Shape};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae train --help`).
pub const LONG_ABOUT: &str = "Train a model on a data file.\n\n\
    The input normalisation (per-feature offset and scale, the rule of hvae::infer::normalise) is \
    fitted on the data and stored in the model. The cluster loss pairs every sample with \
    one of its nearest neighbours, mined over the whole file (by default near both in \
    cosine on the raw features and on the normalised ones). With --components M, data \
    with more than M features train on their M leading principal components (of the \
    normalised features), folded back into the model, which takes the raw features. \
    Schedule: --warmup epochs of \
    the VAE alone (or --warmup-steps of --steps), then the centres are initialised (by \
    default from the partition, among spherical k-means++ runs on the encoder's mean \
    directions and on the normalised inputs, that agrees best with the input \
    neighbourhoods), then joint training; on a data set so large that --epochs would \
    take more than --max-steps optimiser steps, both phases are shortened in \
    proportion to that bound. A `label` column is never used for training \
    unless --supervised; when present it is used to report ACC and NMI as training \
    goes.\n\n\
    --restarts R trains R models and keeps the one a label-free criterion ranks best \
    (--select). --clusters auto trains K = 2 ..= --max-clusters and keeps the model whose \
    labels have the largest silhouette on the mean directions. The defaults and their \
    quality on 16 data sets: docs/benchmarks.md (hvae suite). The same seed gives the \
    same model, bit for bit. The model file is written atomically.";

/// `--clusters`: a number or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clusters {
    /// This many.
    Fixed(u32),
    /// Chosen by the silhouette, up to `--max-clusters`.
    Auto,
}

fn parse_clusters(s: &str) -> Result<Clusters, String> {
    if s == "auto" {
        return Ok(Clusters::Auto);
    }
    match s.parse::<u32>() {
        Ok(k @ 1..=255) => Ok(Clusters::Fixed(k)),
        _ => Err(format!(
            "'{s}' is not a number of clusters in 1..=255 or 'auto'"
        )),
    }
}

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

/// Neighbour space on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum NeighbourArg {
    /// Cosine on the raw features.
    Raw,
    /// Cosine on the normalised features.
    Normalised,
    /// Near by the sum of the ranks under the raw and the normalised cosine.
    Both,
}

/// Restart criterion on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SelectArg {
    /// Silhouette of the labels on the mean directions.
    Silhouette,
    /// Agreement with the input neighbourhoods times cluster balance.
    Agreement,
    /// Mean NMI with the other restarts.
    Consensus,
    /// Normalised association with the neighbour graph of the normalised inputs (the
    /// score of the GMM candidate's choice).
    Association,
}

impl SelectArg {
    /// The criterion.
    pub fn criterion(self) -> Criterion {
        match self {
            SelectArg::Silhouette => Criterion::Silhouette,
            SelectArg::Agreement => Criterion::Agreement,
            SelectArg::Consensus => Criterion::Consensus,
            SelectArg::Association => Criterion::Association,
        }
    }
}

/// Centre initialisation on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum InitArg {
    /// k-means on the mean directions.
    Latent,
    /// The candidate partition that agrees best with the input neighbourhoods.
    Selected,
    /// A diagonal Gaussian mixture on the normalised inputs (centres and weights).
    Gmm,
}

impl From<CentreInit> for InitArg {
    fn from(init: CentreInit) -> Self {
        match init {
            CentreInit::Latent => InitArg::Latent,
            CentreInit::Selected => InitArg::Selected,
            CentreInit::Gmm => InitArg::Gmm,
        }
    }
}

/// Arguments of `hvae train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Data file: CSV with a header (plain or .gz) or a 2-D float .npy array.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Number of clusters K, or `auto`: models with K = 2 ..= --max-clusters are
    /// trained and the one whose labels have the largest silhouette on the mean
    /// directions is kept.
    #[arg(long, value_name = "K|auto", value_parser = parse_clusters)]
    pub clusters: Clusters,
    /// Largest K tried by --clusters auto.
    #[arg(long, default_value_t = 10, value_name = "K",
          value_parser = clap::value_parser!(u32).range(2..=255))]
    pub max_clusters: u32,
    /// Output model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub out: PathBuf,
    /// With --gmm-candidate: also write the model the choice did not keep, as far as it
    /// was trained (to the end, or to the early choice's round: `choice.at` in the
    /// report), to judge the choice on labelled rows of your own (`hvae eval`).
    #[arg(long, value_name = "MODEL")]
    pub other_out: Option<PathBuf>,
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
    /// Data with more features than this train on their M leading principal components
    /// (of the normalised features), folded back into the model's first and last layers:
    /// the model still takes every raw feature (0: never; needs the Gaussian likelihood).
    #[arg(long, default_value_t = crate::pca::DEFAULT_COMPONENTS, value_name = "M")]
    pub components: usize,
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
    /// The balance term as a floor: 0 pulls every cluster towards a share of 1/K (the
    /// entropy of the mean assignment); f in (0, 1] only keeps each share above f/K.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub balance_floor: f32,
    /// Weight of the KL term (beta).
    #[arg(long, default_value_t = 1.0)]
    pub beta: f32,
    /// Weight of the KL term during the warm-up alone (default: --beta throughout).
    #[arg(long, value_name = "B")]
    pub warmup_beta: Option<f32>,
    /// Weight of the density term (delta): the negative log-likelihood of the mean
    /// directions under the segmenter read as a von Mises-Fisher mixture (its centres,
    /// concentration and mixing weights); 0 leaves it off.
    #[arg(long, default_value_t = 0.0, value_name = "DELTA")]
    pub density: f32,
    /// Weight of the neighbour contrast (zeta): InfoNCE on the mean directions, each
    /// row's neighbour its positive and the batch's other rows its negatives, in the
    /// warm-up and the joint phase alike; 0 turns it off.
    #[arg(long, default_value_t = crate::train::CONTRAST, value_name = "ZETA")]
    pub contrast: f32,
    /// Temperature of the neighbour contrast (tau, at least 0.05).
    #[arg(long, value_name = "TAU",
          default_value_t = hvae::train::loss::CONTRAST_TEMPERATURE as f32)]
    pub temperature: f32,
    /// Neighbours a partner is drawn from.
    #[arg(long, default_value_t = 10)]
    pub neighbours: usize,
    /// Optimiser steps in all, warm-up included (0: count in --epochs instead).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub steps: usize,
    /// Optimiser steps of the VAE alone, with --steps.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup_steps: usize,
    /// Without --steps: the least optimiser steps in all. On a data set so small that
    /// --epochs give fewer, warm-up and joint phase are both run a whole number of times
    /// longer, the fewest that reach N (docs/benchmarks.md: what it does to the suite).
    #[arg(long, default_value_t = crate::train::MIN_STEPS, value_name = "N")]
    pub min_steps: usize,
    /// Without --steps: the most optimiser steps in all (0: no bound). On a data set so
    /// large that --epochs give more, warm-up and joint phase are both shortened in the
    /// same proportion to N (docs/benchmarks.md: what it does to the suite).
    #[arg(long, default_value_t = crate::train::MAX_STEPS, value_name = "N")]
    pub max_steps: usize,
    /// Where neighbours are mined: cosine on the raw features, on the normalised
    /// features, or both (nearest by the sum of the two ranks).
    #[arg(long, value_enum, default_value_t = NeighbourArg::Both)]
    pub neighbour_space: NeighbourArg,
    /// Models trained (from derived seeds); the one --select ranks best is kept.
    #[arg(long, default_value_t = 1, value_name = "R",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub restarts: u32,
    /// The label-free criterion that picks among --restarts.
    #[arg(long, value_enum, default_value_t = SelectArg::Association)]
    pub select: SelectArg,
    /// Runs of the spherical k-means that initialises the centres: with --init latent the
    /// best by its objective is kept; with --init selected this many in each space are
    /// candidates.
    #[arg(long, default_value_t = crate::train::KMEANS_RESTARTS, value_name = "N")]
    pub kmeans_restarts: usize,
    /// How the centres start after the warm-up: k-means on the mean directions (latent),
    /// or the partition among k-means runs on the mean directions and on the normalised
    /// inputs that agrees best with the input neighbourhoods (selected).
    #[arg(long, value_enum, default_value_t = InitArg::from(crate::train::CENTRE_INIT))]
    pub init: InitArg,
    /// With --init gmm: the mixture's partition as the targets of a cross-entropy term
    /// for the rest of training (pseudo-labels).
    #[arg(long)]
    pub gmm_targets: bool,
    /// With --gmm-targets: only rows the mixture assigns with at least this
    /// probability get a target (0: every row).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub gmm_confidence: f32,
    /// The GMM candidate's joint phase (after the warm-up it shares with the model as
    /// configured) as a share of the configured one, in (0, 1]: less costs less; what it
    /// does to the suite is in docs/benchmarks.md.
    #[arg(long, default_value_t = 1.0, value_name = "SHARE")]
    pub gmm_joint_share: f32,
    /// Runs of the mixture fit behind --init gmm (k-means++ seeds, Lloyd, EM), compared
    /// by likelihood after 20 EM iterations on at most 512 rows; the best goes on to
    /// convergence on every row.
    #[arg(long, default_value_t = crate::train::GMM_RUNS, value_name = "N")]
    pub gmm_runs: usize,
    /// Full covariances in the GMM candidate's mixture where there are at least 10 rows
    /// per feature and at most 32 features (diagonal ones elsewhere); measured on the
    /// suite, not the default (docs/benchmarks.md).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub gmm_full: bool,
    /// Weight of the consistency term while the GMM candidate (or --init gmm
    /// --gmm-targets) is trained towards the mixture's partition: 0, its clusters are
    /// the mixture's; 1, neighbours pull it off them as they do the model as
    /// configured (docs/benchmarks.md).
    #[arg(long, default_value_t = crate::train::GMM_CONSISTENCY, value_name = "W")]
    pub gmm_consistency: f32,
    /// While trained towards the mixture's partition, the balance term pulls the
    /// cluster shares towards the mixture's (true) or towards equal shares (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub gmm_shares: bool,
    /// Nearest neighbours (Euclidean, normalised features) whose agreement decides
    /// --gmm-candidate's choice (docs/benchmarks.md: how the default was chosen).
    #[arg(long, default_value_t = crate::train::CHOICE_NEIGHBOURS, value_name = "N")]
    pub choice_neighbours: usize,
    /// How --gmm-candidate's choice scores a partition's agreement with those
    /// neighbours: per cluster, averaged over the clusters (association: large clusters
    /// gain nothing by growing), or over all neighbour pairs (agreement, the previous
    /// default).
    #[arg(long, value_enum, default_value_t = crate::train::CHOICE_SCORE)]
    pub choice_score: ChoiceScore,
    /// The least lead in --choice-score with which --gmm-candidate's choice at the
    /// end of the joint phase keeps the model as configured (0: any lead or a tie);
    /// the candidate's partition is the mixture's on every seed, the model's score
    /// varies between seeds by about the default.
    #[arg(long, default_value_t = crate::train::CHOICE_LEAD, value_name = "L")]
    pub choice_lead: f64,
    /// Where --gmm-candidate's choice may be made early: shares of the joint phase in
    /// (0, 1], increasing (1: only at the end). At the first where one model's
    /// --choice-score leads by that share's --choice-margin, only that model trains on
    /// (the same model, in less time).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = crate::train::CHOICE_LOOKS.map(|l| l.at),
        value_name = "SHARE,..."
    )]
    pub choice_at: Vec<f32>,
    /// The lead in --choice-score (in [0, 1]) that makes the early choice at each
    /// --choice-at share (one value: the same at every share). Default: 0.05 at a share
    /// below an eighth, 0.04 below a quarter, 0.02 from a quarter on.
    #[arg(long, value_delimiter = ',', value_name = "M,...")]
    pub choice_margin: Option<Vec<f64>>,
    /// Also train a candidate whose clusters start from and are trained towards a
    /// diagonal Gaussian mixture of the normalised inputs (--init gmm --gmm-targets), and
    /// keep whichever of the two partitions agrees more with the inputs' nearest
    /// neighbours (Euclidean, normalised features; --choice-neighbours of them). On by default (it won on the suite's
    /// tuned half, docs/benchmarks.md); the two share their warm-up, and the candidate's
    /// joint phase is --gmm-joint-share of the configured one; `false` trains one model.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub gmm_candidate: bool,
    /// Train with the `label` column (cross-entropy on labelled rows).
    #[arg(long)]
    pub supervised: bool,
    /// Write the per-epoch training curves (loss parts, ACC/NMI with labels) as JSON:
    /// the warm-up's and the kept model's (the kept restart's with --restarts, the kept
    /// K's with --clusters auto; with --gmm-candidate, `choice` says which model was kept
    /// and why, and `other_epochs` holds the other model's curve up to where it stopped).
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
    /// Negative log-likelihood under the segmenter's mixture (0 with --density 0).
    pub density: f32,
    /// Neighbour contrast (0 with --contrast 0).
    pub contrast: f32,
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
    /// Per-epoch curves: the warm-up's, then the kept model's (its restart's, its K's).
    pub epochs: Vec<EpochReport>,
    /// With --gmm-candidate: the joint epochs of the model not kept (its kind's kept
    /// restart), up to where it stopped (the early choice's round, or the end of its
    /// joint phase).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_epochs: Vec<EpochReport>,
    /// Final scores with labels.
    pub final_scores: Option<metrics::Scores>,
    /// CRC of the written model.
    pub crc: u32,
    /// With --gmm-candidate: which model was kept and why.
    pub choice: Option<GmmChoice>,
    /// Optimiser steps of the schedule, the warm-up's included (each model's, with
    /// --gmm-candidate or --restarts).
    pub steps: usize,
    /// Of which the warm-up's.
    pub warmup_steps: usize,
    /// With --restarts: every restart (of the kind kept, with --gmm-candidate) and its
    /// criteria.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<RestartReport>,
}

/// One restart in [`TrainReport`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RestartReport {
    /// Its seed.
    pub seed: u64,
    /// Its label-free criteria.
    pub criteria: crate::select::Criteria,
    /// True for the one kept.
    pub kept: bool,
}

/// The shape the arguments ask for, for data with `d` features
/// (`k` clusters; `--clusters` itself may be `auto`).
pub fn shape_of(args: &TrainArgs, d: usize, k: usize) -> Result<Shape, Error> {
    let shape = Shape::new(d, &args.hidden, args.latent as usize, k)
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
    match classes_of(labels) {
        Some((indices, c)) if c <= k => Ok(Some(indices)),
        found => {
            let c = found.map_or_else(|| distinct(labels).len(), |(_, c)| c);
            Err(Error::BadInput(format!(
                "the label column has {c} classes but --clusters is {k}: use --clusters {c} or more"
            )))
        }
    }
}

/// Each label's class index (`0..C`, in the order of the label values) and the number
/// of classes `C`; `None` when there are more than 256 classes (an index is a `u8`).
pub fn classes_of(labels: &[i64]) -> Option<(Vec<u8>, usize)> {
    let values = distinct(labels);
    (values.len() <= 256).then(|| {
        let indices = labels
            .iter()
            .map(|l| values.partition_point(|v| v < l) as u8)
            .collect();
        (indices, values.len())
    })
}

/// The distinct label values, sorted.
fn distinct(labels: &[i64]) -> Vec<i64> {
    let mut values = labels.to_vec();
    values.sort_unstable();
    values.dedup();
    values
}

/// `hvae train`'s arguments for `data` and `clusters`, written to `out`: the defaults,
/// changed by `extra` (further options as on the command line).
pub fn args_with(
    data: &std::path::Path,
    clusters: &str,
    out: &std::path::Path,
    extra: &[String],
) -> Result<TrainArgs, Error> {
    #[derive(clap::Parser)]
    struct One {
        #[command(flatten)]
        args: TrainArgs,
    }
    let mut argv: Vec<std::ffi::OsString> = vec![
        "train".into(),
        "--data".into(),
        data.into(),
        "--clusters".into(),
        clusters.into(),
        "--out".into(),
        out.into(),
    ];
    argv.extend(extra.iter().map(Into::into));
    <One as clap::Parser>::try_parse_from(argv)
        .map(|o| o.args)
        .map_err(|e| Error::BadInput(crate::error::one_line(&e.to_string())))
}

/// The training configuration the arguments ask for (checked: warm-up below the epochs,
/// a positive learning rate).
pub fn fit_config(args: &TrainArgs) -> Result<FitConfig, Error> {
    if args.warmup >= args.epochs {
        return Err(Error::BadInput(format!(
            "--warmup {} must be below --epochs {}",
            args.warmup, args.epochs
        )));
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        return Err(Error::BadInput("--lr must be a positive number".into()));
    }
    if !(args.density >= 0.0 && args.density.is_finite()) {
        return Err(Error::BadInput("--density must be a number >= 0".into()));
    }
    if !(args.contrast >= 0.0 && args.contrast.is_finite()) {
        return Err(Error::BadInput("--contrast must be a number >= 0".into()));
    }
    if !(args.temperature >= 0.05 && args.temperature.is_finite()) {
        return Err(Error::BadInput(
            "--temperature must be a number >= 0.05".into(),
        ));
    }
    if args
        .warmup_beta
        .is_some_and(|b| !(b >= 0.0 && b.is_finite()))
    {
        return Err(Error::BadInput(
            "--warmup-beta must be a number >= 0".into(),
        ));
    }
    if !(0.0..=1.0).contains(&args.balance_floor) {
        return Err(Error::BadInput("--balance-floor must be in [0, 1]".into()));
    }
    if !(args.gmm_joint_share > 0.0 && args.gmm_joint_share <= 1.0) {
        return Err(Error::BadInput(
            "--gmm-joint-share must be in (0, 1]".into(),
        ));
    }
    let choice_looks = choice_looks(&args.choice_at, args.choice_margin.as_deref())?;
    if args.choice_neighbours == 0 {
        return Err(Error::BadInput(
            "--choice-neighbours must be at least 1".into(),
        ));
    }
    if !(args.gmm_consistency >= 0.0 && args.gmm_consistency.is_finite()) {
        return Err(Error::BadInput(
            "--gmm-consistency must be finite and >= 0".into(),
        ));
    }
    if !(0.0..=1.0).contains(&args.choice_lead) {
        return Err(Error::BadInput("--choice-lead must be in [0, 1]".into()));
    }
    if !(0.0..=1.0).contains(&args.gmm_confidence) {
        return Err(Error::BadInput("--gmm-confidence must be in [0, 1]".into()));
    }
    let mut cfg = FitConfig {
        epochs: args.epochs,
        warmup_epochs: args.warmup,
        batch: args.batch as usize,
        lr: args.lr,
        seed: args.seed,
        neighbours: args.neighbours.max(1),
        supervised: args.supervised,
        steps: args.steps,
        warmup_steps: args.warmup_steps,
        min_steps: args.min_steps,
        max_steps: args.max_steps,
        neighbour_space: match args.neighbour_space {
            NeighbourArg::Raw => NeighbourSpace::Raw,
            NeighbourArg::Normalised => NeighbourSpace::Normalised,
            NeighbourArg::Both => NeighbourSpace::Both,
        },
        kmeans_restarts: args.kmeans_restarts.max(1),
        init: match args.init {
            InitArg::Latent => CentreInit::Latent,
            InitArg::Selected => CentreInit::Selected,
            InitArg::Gmm => CentreInit::Gmm,
        },
        warmup_beta: args.warmup_beta,
        gmm_targets: args.gmm_targets,
        gmm_confidence: args.gmm_confidence,
        gmm_joint_share: args.gmm_joint_share,
        gmm_runs: args.gmm_runs.max(1),
        gmm_full: args.gmm_full,
        gmm_consistency: args.gmm_consistency,
        gmm_shares: args.gmm_shares,
        choice_lead: args.choice_lead,
        choice_neighbours: args.choice_neighbours,
        choice_score: args.choice_score,
        choice_looks,
        ..FitConfig::default()
    };
    cfg.loss.gamma = args.gamma;
    cfg.loss.eta = args.eta;
    cfg.loss.balance_floor = args.balance_floor;
    cfg.loss.beta = args.beta;
    cfg.loss.density = args.density;
    cfg.loss.contrast = args.contrast;
    cfg.loss.temperature = args.temperature;
    Ok(cfg)
}

/// A trained model and how it was chosen.
pub struct Trained {
    /// The model kept.
    pub model: hvae::VecModel<f32>,
    /// Every restart of the kept K, with its label-free criteria (empty with one).
    pub restarts: Vec<Restart>,
    /// With `--clusters auto`: each K tried and the silhouette of its model.
    pub auto: Vec<(usize, f64)>,
    /// With `--gmm-candidate`: which model was kept and why.
    pub gmm: Option<GmmChoice>,
    /// With `--gmm-candidate`: the model not kept.
    pub other: Option<hvae::VecModel<f32>>,
    /// The restart [`Trained::other`] comes from (0 with one restart, and without the
    /// candidate).
    pub other_restart: usize,
    /// With `--components`: the number of principal components trained on, where the
    /// data had more features.
    pub components: Option<usize>,
}

/// The early choice's looks from --choice-at and --choice-margin: shares in (0, 1],
/// increasing; margins in [0, 1], one per share or one for all, or by default
/// [`default_margin`]'s.
fn choice_looks(at: &[f32], margin: Option<&[f64]>) -> Result<Vec<ChoiceLook>, Error> {
    if at.is_empty() || !at.iter().all(|a| *a > 0.0 && *a <= 1.0) {
        return Err(Error::BadInput("--choice-at must be in (0, 1]".into()));
    }
    if !at.windows(2).all(|w| w[0] < w[1]) {
        return Err(Error::BadInput("--choice-at shares must increase".into()));
    }
    let margins = match margin {
        None => at.iter().map(|&a| default_margin(a)).collect(),
        Some(m) if m.is_empty() || !m.iter().all(|m| (0.0..=1.0).contains(m)) => {
            return Err(Error::BadInput("--choice-margin must be in [0, 1]".into()));
        }
        Some([one]) => vec![*one; at.len()],
        Some(many) if many.len() == at.len() => many.to_vec(),
        Some(_) => {
            return Err(Error::BadInput(
                "--choice-margin needs one value, or one per --choice-at share".into(),
            ))
        }
    };
    Ok(at
        .iter()
        .zip(margins)
        .map(|(&at, margin)| ChoiceLook { at, margin })
        .collect())
}

/// Trains the model `args` ask for on `data` (restarts, `--clusters auto`), on the
/// data's leading principal components where it has more than `--components` features
/// ([`crate::pca`]; every model handed out, to `progress` too, takes the raw features).
/// `progress`, when given, sees every model trained: each K's (the model's shape has
/// it), each restart's ([`crate::train::EpochStats::restart`]) and with
/// `--gmm-candidate` both kinds' ([`crate::train::EpochStats::branch`]).
pub fn train_on(
    args: &TrainArgs,
    data: &Dataset,
    mut progress: Option<&mut Progress<'_>>,
) -> Result<Trained, Error> {
    if args.supervised && matches!(args.clusters, Clusters::Auto) {
        return Err(Error::BadInput(
            "--supervised needs a number of clusters, not auto".into(),
        ));
    }
    let ks: Vec<usize> = clusters_tried(args).collect();
    let largest = ks.iter().copied().max().unwrap_or(1);
    if data.len() < largest {
        return Err(Error::BadInput(format!(
            "--clusters {largest} is more than the {} rows of the data",
            data.len()
        )));
    }
    let classes = if args.supervised {
        class_indices(data, largest)?
    } else {
        None
    };
    let cfg = fit_config(args)?;
    let fail = |e: crate::train::FitError| Error::Failed(format!("training failed: {e}"));
    let likelihood = shape_of(args, data.dim(), largest)?.likelihood;
    if args.components > 0 && likelihood != Likelihood::Gaussian {
        return Err(Error::BadInput(
            "--components needs the Gaussian likelihood (a Bernoulli decoder reconstructs \
             the raw values, not components)"
                .into(),
        ));
    }
    let projection =
        Projection::fit(data.features(), data.dim(), args.components, likelihood).map_err(fail)?;
    let components = projection
        .as_ref()
        .map(|p| (p.apply(data.features()), p.output_len()));
    let (x, d) = match &components {
        Some((z, m)) => (&z[..], *m),
        None => (data.features(), data.dim()),
    };
    // Projected rows learn from the data's own neighbours (mined on the raw features,
    // as without the projection) and keep the components' proportions.
    let mined = projection
        .as_ref()
        .map(|_| {
            let raw = data.features();
            crate::train::mine_for(cfg.neighbour_space, raw, data.dim(), cfg.neighbours)
        })
        .transpose()
        .map_err(fail)?;
    let prepared = Prepared {
        neighbours: mined.as_deref(),
        shared_scale: projection.is_some(),
    };
    // Each model as one that takes the raw features.
    let fold = |m: hvae::VecModel<f32>| match &projection {
        Some(p) => p.fold(&m).map_err(fail),
        None => Ok(m),
    };
    let mut report = |s: &crate::train::EpochStats, m: &hvae::VecModel<f32>| {
        let Some(progress) = progress.as_mut() else {
            return;
        };
        match &projection {
            None => progress(s, m),
            // A fold fails only on a model of the wrong width, and the trained model's
            // fold below then says so.
            Some(p) => {
                if let Ok(folded) = p.fold(m) {
                    progress(s, &folded);
                }
            }
        }
    };
    // The model as configured, or with --gmm-candidate the better of it and the
    // mixture-trained candidate (not with labels: they are the targets then).
    let mut fit_one = |k, classes: Option<&[u8]>| -> Result<Trained, Error> {
        let job = Restarts {
            fit: FitJob {
                shape: shape_of(args, d, k)?,
                x,
                labels: classes,
                cfg: &cfg,
                prepared,
            },
            restarts: args.restarts as usize,
            criterion: args.select.criterion(),
        };
        if args.gmm_candidate && classes.is_none() {
            let f = fit_with_gmm_candidate(job, &mut report).map_err(fail)?;
            Ok(Trained {
                model: fold(f.model)?,
                restarts: f.restarts,
                auto: Vec::new(),
                gmm: Some(f.choice),
                other: Some(fold(f.other)?),
                other_restart: f.other_restart,
                components: projection.as_ref().map(Projection::output_len),
            })
        } else {
            let (model, restarts) = fit_restarts(job, &mut report).map_err(fail)?;
            Ok(Trained {
                model: fold(model)?,
                restarts,
                auto: Vec::new(),
                gmm: None,
                other: None,
                other_restart: 0,
                components: projection.as_ref().map(Projection::output_len),
            })
        }
    };
    if let [k] = ks[..] {
        return fit_one(k, classes.as_deref());
    }
    let mut best: Option<(f64, Trained)> = None;
    let mut auto = Vec::with_capacity(ks.len());
    for k in ks {
        let t = fit_one(k, None)?;
        let (labels, mus) = crate::select::answers(&t.model, data.features()).map_err(fail)?;
        let score = crate::select::silhouette(&mus, t.model.shape().latent, &labels, k);
        auto.push((k, score));
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, t));
        }
    }
    let (_, mut t) = best.ok_or_else(|| Error::BadInput("no number of clusters to try".into()))?;
    t.auto = auto;
    Ok(t)
}

/// What [`train_on`] reports after each round of training: the round's statistics and
/// the model as it stands (taking the raw features).
pub type Progress<'p> = dyn FnMut(&crate::train::EpochStats, &hvae::VecModel<f32>) + 'p;

/// The numbers of clusters trained, in order: `--clusters K` alone, or with `auto`
/// 2 ..= --max-clusters.
fn clusters_tried(args: &TrainArgs) -> std::ops::RangeInclusive<usize> {
    match args.clusters {
        Clusters::Fixed(k) => k as usize..=k as usize,
        Clusters::Auto => 2..=args.max_clusters as usize,
    }
}

/// Which model an epoch trained: its K, restart and branch.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Trainee {
    k: usize,
    restart: usize,
    branch: usize,
}

/// Runs `hvae train`.
pub fn run(args: &TrainArgs, out: &mut dyn Write) -> Result<(), Error> {
    if let Some(other) = &args.other_out {
        if !args.gmm_candidate || args.supervised {
            return Err(Error::BadInput(
                "--other-out needs the GMM candidate (--gmm-candidate true, not --supervised)"
                    .into(),
            ));
        }
        if *other == args.out {
            return Err(Error::BadInput(
                "--other-out must name another file than --out".into(),
            ));
        }
    }
    let data = data::load(&args.data)?;
    if args.supervised && data.labels().is_none() {
        return Err(Error::BadInput(format!(
            "--supervised needs a '{}' column in {}",
            data::LABEL_COLUMN,
            args.data.display()
        )));
    }
    // The labels score the curves. With a fixed K, more classes than clusters is
    // refused (a likely mistake in --clusters); `auto` may find any number.
    let classes = match args.clusters {
        Clusters::Fixed(k) => class_indices(&data, k as usize)?,
        Clusters::Auto => class_indices(&data, 255)?,
    };

    let cfg = fit_config(args)?;
    // One round an epoch (as many as the schedule, bounded or lengthened, runs), or a
    // hundredth of --steps; the bar runs over every model trained, one after the other:
    // each K's (`auto`: 2, 3, ...), each restart's.
    let rounds = cfg.rounds(data.len());
    let restarts = args.restarts.max(1) as usize;
    let tried = clusters_tried(args);
    let first_k = *tried.start();
    let models = tried.count() * restarts;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new((rounds * models) as u64);
        let template = if models > 1 {
            format!("{{bar:30}} epoch {{pos}}/{{len}} of {models} models {{msg}}")
        } else {
            "{bar:30} epoch {pos}/{len} {msg}".to_string()
        };
        b.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    // Every epoch seen, with the K, restart and branch (the model as configured, or with
    // --gmm-candidate the candidate) that trained it: the report keeps the kept model's.
    let mut epochs: Vec<(Trainee, EpochReport)> = Vec::with_capacity(rounds * models);
    let start = std::time::Instant::now();
    // Each epoch's ACC and NMI cost a pass over the data: only for a bar or a report.
    let scored = !args.quiet || args.report.is_some();
    let trained = train_on(
        args,
        &data,
        Some(&mut |s, model| {
            let (acc, nmi) = match &classes {
                Some(truth) if scored => {
                    let pred = predict(model, &data);
                    let sc = metrics::scores(truth, &pred);
                    (Some(sc.acc), Some(sc.nmi))
                }
                _ => (None, None),
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
            } else if s.branch > 0 {
                msg.push_str(" [GMM candidate]");
            }
            let k = model.shape().clusters;
            if matches!(args.clusters, Clusters::Auto) {
                msg.push_str(&format!(" [K = {k}]"));
            }
            if restarts > 1 {
                msg.push_str(&format!(" [restart {}/{restarts}]", s.restart + 1));
            }
            bar.set_message(msg);
            // The models train one after the other, and a restart's branches too: the bar
            // shows the furthest epoch.
            let before = (k.saturating_sub(first_k) * restarts + s.restart) * rounds;
            bar.set_position(bar.position().max((before + s.epoch) as u64));
            epochs.push((
                Trainee {
                    k,
                    restart: s.restart,
                    branch: s.branch,
                },
                EpochReport {
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
                        density: l.density,
                        contrast: l.contrast,
                    },
                    acc,
                    nmi,
                },
            ));
        }),
    )?;
    let kept = Trainee {
        k: trained.model.shape().clusters,
        restart: crate::select::kept_restart(&trained.restarts),
        branch: trained.gmm.map_or(0, |c| usize::from(c.gmm_kept)),
    };
    // With --gmm-candidate, the other kind's pick (there are two branches).
    let other = trained.gmm.map(|_| Trainee {
        restart: trained.other_restart,
        branch: 1 - kept.branch,
        ..kept
    });
    let (mut kept_epochs, mut other_epochs) = (Vec::new(), Vec::new());
    for (t, e) in epochs {
        // The warm-up is every branch's (tagged 0): the kept model's if its restart's.
        if t == kept || (e.warmup && t == Trainee { branch: 0, ..kept }) {
            kept_epochs.push(e);
        } else if Some(t) == other && !e.warmup {
            other_epochs.push(e);
        }
    }
    let model = trained.model;
    let shape = *model.shape();
    for (k, score) in &trained.auto {
        outln!(out, "K = {k}: silhouette {score:.4}")?;
    }
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
    if let Some(m) = trained.components {
        outln!(
            out,
            "trained on the {m} leading principal components of the normalised features \
             (--components), folded back into the model"
        )?;
    }
    let (warmup_steps, steps) = cfg.schedule(data.len());
    let unbounded = FitConfig {
        max_steps: 0,
        ..cfg.clone()
    }
    .schedule(data.len())
    .1;
    if steps < unbounded {
        outln!(
            out,
            "schedule bounded at {steps} optimiser steps by --max-steps ({warmup_steps} of \
             warm-up; {unbounded} without the bound)"
        )?;
    }
    if let Some(c) = &trained.gmm {
        outln!(out, "{}", describe_choice(c, args.choice_score))?;
        // Within the lead the score cannot tell the models apart (docs/benchmarks.md:
        // no label-free criterion could): say how to judge them with labels.
        let close = !c.early() && (c.agreement_plain - c.agreement_gmm).abs() < args.choice_lead;
        if close && args.other_out.is_none() {
            outln!(
                out,
                "the two scores are within --choice-lead {}: with labelled rows, judge both \
                 (--other-out FILE writes the model not kept; hvae eval scores each)",
                args.choice_lead
            )?;
        }
    }
    if let (Some(path), Some(other), Some(c)) = (&args.other_out, &trained.other, &trained.gmm) {
        let crc = model_io::save(path, other).map_err(|e| Error::Failed(e.to_string()))?;
        let trained_to = if c.early() {
            format!("trained to {} of its joint phase", c.at)
        } else {
            "trained to the end".to_string()
        };
        outln!(
            out,
            "wrote the model not kept to {} (CRC {crc:#010x}), {trained_to}",
            path.display()
        )?;
    }
    if let Some(line) = describe_restarts(&trained.restarts, args.select.criterion()) {
        outln!(out, "{line}")?;
    }
    if let Some(s) = &final_scores {
        outln!(out, "ACC {:.4}  NMI {:.4}  ARI {:.4}", s.acc, s.nmi, s.ari)?;
    }
    if let Some(path) = &args.report {
        let report = TrainReport {
            data: args.data.display().to_string(),
            n: data.len(),
            shape: ShapeReport::of(&shape),
            seed: args.seed,
            seconds,
            epochs: kept_epochs,
            other_epochs,
            choice: trained.gmm,
            final_scores,
            crc,
            steps,
            warmup_steps,
            restarts: trained
                .restarts
                .iter()
                .map(|r| RestartReport {
                    seed: r.seed,
                    criteria: r.criteria,
                    kept: r.kept,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Failed(e.to_string()))?;
        crate::fsio::write_bytes_atomic(path, &json)?;
    }
    Ok(())
}

/// One line on --gmm-candidate's choice: the model kept, both models' `score` against the
/// neighbours (--choice-score, named) and where the choice was made.
pub fn describe_choice(c: &GmmChoice, score: ChoiceScore) -> String {
    let (kept, a, other, b) = if c.gmm_kept {
        (
            "the GMM candidate",
            c.agreement_gmm,
            "the model as configured",
            c.agreement_plain,
        )
    } else {
        (
            "the model as configured",
            c.agreement_plain,
            "the GMM candidate",
            c.agreement_gmm,
        )
    };
    let when = if c.early() {
        format!("at {} of the joint phase", c.at)
    } else {
        "at the end".to_string()
    };
    let named = match score {
        ChoiceScore::Association => "neighbour association",
        ChoiceScore::Agreement => "neighbour agreement",
    };
    format!("kept {kept}: {named} {a:.4} against {b:.4} for {other}, chosen {when}")
}

/// One line on --restarts' pick: the restart kept, by which criterion (`asked`, or
/// what it falls back to: [`Criterion::used_with`]) and every restart's value of it;
/// `None` without restarts.
pub fn describe_restarts(restarts: &[Restart], asked: Criterion) -> Option<String> {
    let (i, kept) = restarts.iter().enumerate().find(|(_, r)| r.kept)?;
    let used = asked.used_with(restarts.len());
    let values: Vec<String> = restarts
        .iter()
        .map(|r| format!("{:.4}", r.criteria.get(used)))
        .collect();
    Some(format!(
        "kept restart {} of {} (seed {}) by its {}: {}",
        i + 1,
        restarts.len(),
        kept.seed,
        used.name(),
        values.join(", ")
    ))
}

/// The model's label for every row (a row it cannot encode gets cluster 0).
pub fn predict<S: AsRef<[f32]>>(model: &hvae::Model<f32, S>, data: &Dataset) -> Vec<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The looks from --choice-at and --choice-margin: margins one per share, one for
    /// all, or by default by share; shares that do not increase and margins that match
    /// neither count are refused.
    #[test]
    fn choice_looks_pair_shares_with_margins() {
        let look = |at, margin| ChoiceLook { at, margin };
        let looks = choice_looks(&[0.0625, 0.125, 0.25], None).unwrap();
        assert_eq!(looks, crate::train::CHOICE_LOOKS);
        assert_eq!(
            looks,
            [look(0.0625, 0.05), look(0.125, 0.04), look(0.25, 0.02)]
        );
        assert_eq!(choice_looks(&[1.0], None).unwrap(), [look(1.0, 0.02)]);
        assert_eq!(
            choice_looks(&[0.1, 0.5], Some(&[0.0])).unwrap(),
            [look(0.1, 0.0), look(0.5, 0.0)]
        );
        assert_eq!(
            choice_looks(&[0.1, 0.5], Some(&[0.3, 0.2])).unwrap(),
            [look(0.1, 0.3), look(0.5, 0.2)]
        );
        for (at, margin, needle) in [
            (&[0.25, 0.125][..], None, "increase"),
            (&[0.25, 0.25][..], None, "increase"),
            (&[0.125, 0.25][..], Some(&[0.1, 0.2, 0.3][..]), "one per"),
            (&[0.125, 0.25][..], Some(&[][..]), "[0, 1]"),
            (&[][..], None, "(0, 1]"),
        ] {
            let e = choice_looks(at, margin).unwrap_err().to_string();
            assert!(e.contains(needle), "{at:?} {margin:?}: {e}");
        }
    }
}
