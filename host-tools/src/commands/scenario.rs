//! `hvae device-train --scenario`: the flows users have with a deployed model, each run on
//! the device and on the host engine, with its numbers and its bar.
//!
//! `drift`: a model trained on the host is deployed; the device's sensor then drifts (a
//! gain and an offset per feature, [`Drift`]). Two streams: the drift present from the
//! first sample (sudden), and the drift growing linearly over the first
//! [`RAMP_SHARE`] of the stream, then held (gradual). Each adaptation scope learns from
//! each stream; the result is scored on the whole data set under the full drift, beside
//! the frozen model and an oracle trained on the host on the drifted data.

use super::device_train::{
    permutation, quality, run_requests, DeviceTrainArgs, Quality, Schedule, ScopeArg,
};
use super::outln;
use crate::data::Dataset;
use crate::model_io::LoadedModel;
use crate::train::{self as host_train, FitConfig};
use crate::Error;
use hvae::protocol::{TrainOptimiser, TrainScope, TrainSettings};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::io::Write;

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioArg {
    /// Adapt a deployed model to a drifted sensor.
    Drift,
}

/// Learning rate of the adaptation scopes (without --lr).
pub const ADAPT_LR: f32 = 1e-4;

/// Share of the gradual stream over which the drift grows to its full size.
pub const RAMP_SHARE: f64 = 0.75;

/// Least share of the oracle's ACC the segmenter-and-normalisation scope must reach.
pub const RECOVERY_BAR: f64 = 0.95;

/// Least ACC the drift must cost the frozen model (a drift it shrugs off tests nothing).
pub const FROZEN_DROP_BAR: f64 = 0.10;

/// A sensor's drift: feature `j` reads `gain[j] x + offset[j]` instead of `x`.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    /// Per-feature gain.
    pub gain: Vec<f32>,
    /// Per-feature offset, in the feature's units.
    pub offset: Vec<f32>,
}

impl Drift {
    /// Gains uniform in `[1 - gain, 1 + gain]` and offsets uniform in
    /// `[-offset, offset]` standard deviations of each feature of `data`, seeded.
    pub fn new(data: &Dataset, gain: f32, offset: f32, seed: u64) -> Drift {
        let d = data.dim();
        let n = data.len().max(1) as f64;
        let mut mean = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for row in data.rows() {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += f64::from(v);
                sq[j] += f64::from(v) * f64::from(v);
            }
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut uniform = || 2.0 * (rng.next_u32() as f64 / 4_294_967_296.0) - 1.0;
        let mut g = Vec::with_capacity(d);
        let mut o = Vec::with_capacity(d);
        for j in 0..d {
            let m = mean[j] / n;
            let sd = (sq[j] / n - m * m).max(0.0).sqrt();
            g.push((1.0 + f64::from(gain) * uniform()) as f32);
            o.push((f64::from(offset) * uniform() * sd) as f32);
        }
        Drift { gain: g, offset: o }
    }

    /// `x` under the share `t` (in `[0, 1]`) of the drift.
    pub fn apply(&self, x: &[f32], t: f32) -> Vec<f32> {
        x.iter()
            .zip(self.gain.iter().zip(&self.offset))
            .map(|(&v, (&g, &o))| (1.0 + t * (g - 1.0)) * v + t * o)
            .collect()
    }

    /// Every row of `data` under the full drift.
    pub fn shifted(&self, data: &Dataset) -> Result<Dataset, Error> {
        let features: Vec<f32> = data.rows().flat_map(|r| self.apply(r, 1.0)).collect();
        Dataset::new(
            data.columns().to_vec(),
            features,
            data.labels().map(<[i64]>::to_vec),
        )
        .map_err(Error::Failed)
    }
}

/// One adaptation run of the drift scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftRun {
    /// `sudden` or `gradual`.
    pub stream: String,
    /// The scope.
    pub scope: String,
    /// The device's model on the drifted data.
    pub device: Quality,
    /// The host engine's model on the drifted data.
    pub host: Quality,
    /// Device and host weights bit for bit the same.
    pub bit_identical: bool,
    /// The device's ACC over the oracle's.
    pub share_of_oracle: f64,
    /// Seconds of the device session.
    pub device_seconds: f64,
}

/// The drift scenario's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftReport {
    /// `drift`.
    pub scenario: String,
    /// The device.
    pub device: String,
    /// Gains in `[1 - gain, 1 + gain]`.
    pub gain: f32,
    /// Offsets up to this many standard deviations.
    pub offset_sd: f32,
    /// Seed of the drift and of the stream order.
    pub seed: u64,
    /// Samples (and steps) per stream.
    pub samples: u32,
    /// The deployed model on the data before the drift.
    pub deployed: Quality,
    /// The deployed model, unchanged, on the drifted data.
    pub frozen: Quality,
    /// A model trained on the host on the drifted data (`hvae train` defaults).
    pub oracle: Quality,
    /// ACC the drift costs the frozen model.
    pub frozen_drop: f64,
    /// Bar on `frozen_drop`.
    pub frozen_drop_bar: f64,
    /// Bar on the segmenter-and-normalisation scope's share of the oracle's ACC.
    pub recovery_bar: f64,
    /// Every run.
    pub runs: Vec<DriftRun>,
    /// Every bar met and every run bit-identical.
    pub pass: bool,
}

/// The scopes the drift scenario adapts with.
const DRIFT_SCOPES: [TrainScope; 3] = [
    TrainScope::SegmenterAndNormalisation,
    TrainScope::SegmenterOnly,
    TrainScope::EncoderAndSegmenter,
];

fn scope_arg(s: TrainScope) -> Option<ScopeArg> {
    match s {
        TrainScope::SegmenterAndNormalisation => Some(ScopeArg::SegmenterAndNormalisation),
        TrainScope::SegmenterOnly => Some(ScopeArg::SegmenterOnly),
        TrainScope::EncoderAndSegmenter => Some(ScopeArg::EncoderAndSegmenter),
        TrainScope::Full => None,
    }
}

/// Runs the drift scenario on an open device: the scopes of `args.scope` (`all`: every
/// adaptation scope).
pub fn drift(
    dev: &mut hvae_devkit::Device,
    model: &LoadedModel,
    data: &Dataset,
    args: &DeviceTrainArgs,
) -> Result<DriftReport, Error> {
    let drift = Drift::new(data, args.drift_gain, args.drift_offset, args.seed);
    let shifted = drift.shifted(data)?;
    let params = model.model.params().to_vec();
    let deployed = quality(params.clone(), model, data)?;
    let frozen = quality(params, model, &shifted)?;
    let oracle = {
        let cfg = FitConfig {
            seed: args.seed,
            ..FitConfig::default()
        };
        let m = host_train::fit(
            *model.model.shape(),
            shifted.features(),
            None,
            &cfg,
            |_, _| {},
        )
        .map_err(|e| Error::Failed(format!("the oracle's training failed: {e}")))?;
        let loaded = LoadedModel {
            model: m,
            crc: 0,
            bytes: 0,
        };
        quality(loaded.model.params().to_vec(), &loaded, &shifted)?
    };
    let optimiser = args.optimiser.to_wire(args.momentum, args.memory);
    let order = permutation(data.len(), args.seed);
    let n = args.steps as usize;
    let mut runs = Vec::new();
    for stream in ["sudden", "gradual"] {
        let share = |i: usize| -> f32 {
            if stream == "sudden" {
                1.0
            } else {
                ((i as f64 / (RAMP_SHARE * n as f64)).min(1.0)) as f32
            }
        };
        for scope in DRIFT_SCOPES {
            if args.scope != ScopeArg::All && scope_arg(scope) != Some(args.scope) {
                continue;
            }
            // Online k-means moves the centres alone.
            if matches!(optimiser, TrainOptimiser::OnlineKMeans { .. })
                && scope == TrainScope::EncoderAndSegmenter
            {
                continue;
            }
            let schedule = Schedule {
                settings: TrainSettings {
                    scope,
                    optimiser,
                    lr: args.lr.unwrap_or(ADAPT_LR),
                    batch: args.batch,
                },
                steps: args.steps,
                per_request: args.per_request,
                seed: args.seed,
            };
            let rows = (0..).map(|i| drift.apply(data.row(order[i % order.len()]), share(i)));
            let requests = schedule.requests_of(data.dim(), rows)?;
            let (r, _) = run_requests(dev, model, &shifted, scope, &requests)?;
            runs.push(DriftRun {
                stream: stream.to_string(),
                scope: r.scope,
                device: r.device,
                host: r.host,
                bit_identical: r.bit_identical,
                share_of_oracle: r.device.acc / oracle.acc,
                device_seconds: r.device_seconds,
            });
        }
    }
    let frozen_drop = deployed.acc - frozen.acc;
    let pass = frozen_drop >= FROZEN_DROP_BAR
        && runs.iter().all(|r| r.bit_identical)
        && runs
            .iter()
            .filter(|r| r.scope == "segmenter-and-normalisation")
            .all(|r| r.share_of_oracle >= RECOVERY_BAR);
    Ok(DriftReport {
        scenario: "drift".to_string(),
        device: dev.name().to_string(),
        gain: args.drift_gain,
        offset_sd: args.drift_offset,
        seed: args.seed,
        samples: args.steps,
        deployed,
        frozen,
        oracle,
        frozen_drop,
        frozen_drop_bar: FROZEN_DROP_BAR,
        recovery_bar: RECOVERY_BAR,
        runs,
        pass,
    })
}

/// Prints the drift scenario's table.
pub fn print_drift(r: &DriftReport, out: &mut dyn Write) -> Result<(), Error> {
    outln!(
        out,
        "scenario drift on {}: gains in [{:.2}, {:.2}], offsets up to {} sd, seed {}, {} samples \
         per stream",
        r.device,
        1.0 - r.gain,
        1.0 + r.gain,
        r.offset_sd,
        r.seed,
        r.samples
    )?;
    outln!(out, "{:<44} {:>7} {:>7}", "model", "ACC", "NMI")?;
    for (name, q) in [
        ("deployed, before the drift", r.deployed),
        ("frozen, after the drift", r.frozen),
        ("oracle: trained on the host on the drifted data", r.oracle),
    ] {
        outln!(out, "{:<44} {:>7.4} {:>7.4}", name, q.acc, q.nmi)?;
    }
    outln!(
        out,
        "frozen model's drop: {:.4} ACC (bar: >= {})",
        r.frozen_drop,
        r.frozen_drop_bar
    )?;
    outln!(
        out,
        "{:<8} {:<28} {:>16} {:>16} {:>9} {:>14} {:>9}",
        "stream",
        "scope",
        "device ACC/NMI",
        "host ACC/NMI",
        "x oracle",
        "bit-identical",
        "device s"
    )?;
    for run in &r.runs {
        outln!(
            out,
            "{:<8} {:<28} {:>9.4}/{:.3} {:>9.4}/{:.3} {:>9.3} {:>14} {:>9.1}",
            run.stream,
            run.scope,
            run.device.acc,
            run.device.nmi,
            run.host.acc,
            run.host.nmi,
            run.share_of_oracle,
            if run.bit_identical { "yes" } else { "no" },
            run.device_seconds
        )?;
    }
    outln!(
        out,
        "(scored on the whole data set under the full drift; bar: segmenter-and-normalisation \
         >= {} x the oracle's ACC on both streams, every run bit-identical)",
        r.recovery_bar
    )?;
    outln!(out, "{}", if r.pass { "PASS" } else { "FAIL" })
}
