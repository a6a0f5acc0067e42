//! `hvae eval`: how well a model clusters labelled data, next to the baselines.

use super::outln;
use crate::baselines::{self, BaselineConfig};
use crate::data::{self, Dataset};
use crate::metrics::{self, Scores};
use crate::model_io;
use crate::Error;
use hvae::VecModel;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae eval --help`).
pub const LONG_ABOUT: &str = "Score a model's clusters on data.\n\n\
        Every row is segmented by the model (its label is the most probable cluster of the \
        encoder's mean direction). With a `label` column, prints ACC (Hungarian matching), \
        NMI and ARI of the model's labels, and of two baselines the tool runs on the same \
        raw features with K = the model's cluster count: k-means (Euclidean, k-means++, best \
        of --restarts runs) and spherical k-means (the core's, same restarts). Always prints \
        the number of rows and the mean novelty score (1 - cosine between the mean \
        direction and its nearest centre). Without labels, says so and prints what can be \
        computed (rows, novelty, cluster sizes).";

/// Arguments of `hvae eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// Data file: CSV with a header (plain or .gz; a `label` column is used for the
    /// scores, never as a feature) or a 2-D float .npy array.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Print exactly one JSON object on stdout:
    /// {"n","acc","nmi","ari","novelty","cluster_sizes","baselines":{"kmeans":{"acc","nmi","ari"},"spherical_kmeans":{...}}}
    /// (scores are null without labels).
    #[arg(long)]
    pub json: bool,
    /// Seed of the baselines' random draws.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Runs of each baseline; the best (by its own objective) is scored.
    #[arg(long, default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub restarts: u32,
}

/// What the model says about the data.
#[derive(Clone, Debug, PartialEq)]
pub struct Segmentation {
    /// Cluster of each row.
    pub labels: Vec<usize>,
    /// Mean novelty `1 - cosine to the nearest centre`.
    pub mean_novelty: f64,
    /// Rows per cluster (`K` entries).
    pub cluster_sizes: Vec<usize>,
}

/// Segments every row of `data` with `model` (the sizes must match).
pub fn segment_all(model: &VecModel<f32>, data: &Dataset) -> Result<Segmentation, Error> {
    let shape = model.shape();
    let mut work = vec![0.0f32; shape.work_len()];
    let mut labels = Vec::with_capacity(data.len());
    let mut novelty = 0.0f64;
    let mut sizes = vec![0usize; shape.clusters];
    for (i, row) in data.rows().enumerate() {
        let seg = model
            .segment(row, &mut work)
            .map_err(|e| Error::Failed(format!("the model fails on data row {}: {e}", i + 1)))?;
        labels.push(seg.label);
        sizes[seg.label] += 1;
        novelty += f64::from(seg.novelty());
    }
    Ok(Segmentation {
        labels,
        mean_novelty: novelty / data.len().max(1) as f64,
        cluster_sizes: sizes,
    })
}

/// Scores of the two baselines; `None` for one that could not run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaselineScores {
    /// Euclidean k-means on the raw features.
    pub kmeans: Option<Scores>,
    /// Spherical k-means (the core's) on the raw features.
    pub spherical_kmeans: Option<Scores>,
}

/// The JSON report of `hvae eval --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// Rows evaluated.
    pub n: usize,
    /// Model ACC (null without labels).
    pub acc: Option<f64>,
    /// Model NMI.
    pub nmi: Option<f64>,
    /// Model ARI.
    pub ari: Option<f64>,
    /// Mean novelty score.
    pub novelty: f64,
    /// Rows per model cluster.
    pub cluster_sizes: Vec<usize>,
    /// The baselines' scores (null without labels).
    pub baselines: Option<BaselineScores>,
}

/// Runs both baselines on `data` with `k` clusters and scores them against `truth`.
/// A baseline that cannot run is `None` and its reason is returned beside.
pub fn run_baselines(
    data: &Dataset,
    truth: &[i64],
    cfg: &BaselineConfig,
) -> (BaselineScores, Vec<String>) {
    let mut notes = Vec::new();
    let kmeans = match baselines::kmeans(data.features(), data.dim(), cfg) {
        Ok(l) => Some(metrics::scores(truth, &l)),
        Err(e) => {
            notes.push(format!("k-means baseline skipped: {e}"));
            None
        }
    };
    let spherical = match baselines::spherical_kmeans(data.features(), data.dim(), cfg) {
        Ok(r) => Some(metrics::scores(truth, &r.labels)),
        Err(e) => {
            notes.push(format!("spherical k-means baseline skipped: {e}"));
            None
        }
    };
    (
        BaselineScores {
            kmeans,
            spherical_kmeans: spherical,
        },
        notes,
    )
}

/// Checks that the model can read the data's rows.
pub fn check_sizes(
    model: &VecModel<f32>,
    model_path: &std::path::Path,
    data: &Dataset,
    data_path: &std::path::Path,
) -> Result<(), Error> {
    let want = model.shape().input;
    if data.dim() != want {
        return Err(Error::BadInput(format!(
            "model {} expects {want} input features but {} has {} feature columns",
            model_path.display(),
            data_path.display(),
            data.dim()
        )));
    }
    Ok(())
}

/// Runs `hvae eval`.
pub fn run(args: &EvalArgs, out: &mut dyn Write) -> Result<(), Error> {
    let loaded = model_io::load(&args.model)?;
    let data = data::load(&args.data)?;
    let model = &loaded.model;
    check_sizes(model, &args.model, &data, &args.data)?;
    let seg = segment_all(model, &data)?;
    let k = model.shape().clusters;
    let cfg = BaselineConfig {
        restarts: args.restarts as usize,
        seed: args.seed,
        ..BaselineConfig::new(k)
    };
    let (scores, baselines, notes) = match data.labels() {
        Some(truth) => {
            let (b, notes) = run_baselines(&data, truth, &cfg);
            (Some(metrics::scores(truth, &seg.labels)), Some(b), notes)
        }
        None => (
            None,
            None,
            vec![format!(
                "{} has no '{}' column: ACC, NMI and ARI cannot be computed",
                args.data.display(),
                data::LABEL_COLUMN
            )],
        ),
    };
    for n in &notes {
        eprintln!("hvae: note: {n}");
    }
    if args.json {
        let report = EvalReport {
            n: data.len(),
            acc: scores.map(|s| s.acc),
            nmi: scores.map(|s| s.nmi),
            ari: scores.map(|s| s.ari),
            novelty: seg.mean_novelty,
            cluster_sizes: seg.cluster_sizes,
            baselines,
        };
        let text = serde_json::to_string(&report)
            .map_err(|e| Error::Failed(format!("cannot encode the report: {e}")))?;
        return outln!(out, "{text}");
    }
    let s = model.shape();
    outln!(
        out,
        "model  {}: {} -> {:?} -> S^{}, K = {}, CRC {:#010x}",
        args.model.display(),
        s.input,
        crate::export::hidden_widths(s),
        s.latent - 1,
        k,
        loaded.crc
    )?;
    let classes = match data.labels() {
        Some(_) => format!("{} classes", data.class_count()),
        None => "no labels".to_string(),
    };
    outln!(
        out,
        "data   {}: {} rows, {} features, {classes}",
        args.data.display(),
        data.len(),
        data.dim()
    )?;
    outln!(out)?;
    if let (Some(m), Some(b)) = (scores, &baselines) {
        outln!(out, "{:<34} {:>6} {:>6} {:>6}", "", "ACC", "NMI", "ARI")?;
        let row = |name: &str, s: Option<Scores>| match s {
            Some(s) => format!("{name:<34} {:>6.4} {:>6.4} {:>6.4}", s.acc, s.nmi, s.ari),
            None => format!("{name:<34} {:>6} {:>6} {:>6}", "-", "-", "-"),
        };
        outln!(out, "{}", row("model", Some(m)))?;
        outln!(
            out,
            "{}",
            row(&format!("k-means, raw features (K = {k})"), b.kmeans)
        )?;
        outln!(
            out,
            "{}",
            row(&format!("spherical k-means (K = {k})"), b.spherical_kmeans)
        )?;
        outln!(
            out,
            "(baselines: best of {} runs, seed {})",
            args.restarts,
            args.seed
        )?;
        outln!(out)?;
    } else {
        outln!(out, "no labels: ACC, NMI and ARI cannot be computed")?;
    }
    outln!(out, "cluster sizes: {:?}", seg.cluster_sizes)?;
    outln!(
        out,
        "mean novelty (1 - cosine to the nearest centre): {:.4}",
        seg.mean_novelty
    )
}
