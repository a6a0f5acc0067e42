//! `hvae device-train --scenario`: the flows users have with a deployed model, each run on
//! the device and on the host engine, with its numbers and its bar.
//!
//! `drift`: a model trained on the host is deployed; the device's sensor then drifts (a
//! gain and an offset per feature, [`Drift`]). Two streams: the drift present from the
//! first sample (sudden), and the drift growing linearly over the first
//! [`RAMP_SHARE`] of the stream, then held (gradual). Each adaptation scope learns from
//! each stream; the result is scored on the whole data set under the full drift, beside
//! the frozen model and an oracle trained on the host on the drifted data.
//!
//! `new-clusters`: the host trains on 7 of the 10 classes; the device spawns centres for
//! the others from persistent novelty.
//!
//! `scratch`: a fresh initialisation of a small network ([`SCRATCH_HIDDEN`] hidden
//! units) learns on the device from the stream alone, within [`SCRATCH_RAM_BAR`] bytes
//! of training state: the optimiser `hvae::device::SCRATCH_OPTIM`, the update layer by
//! layer, and a memory of past samples stored as bytes (the scratch engine,
//! [`crate::device::learn_host::ScratchLearner`]).

use super::device_train::{
    fresh, permutation, quality, with_fitted_normalisation, DeviceTrainArgs, OptimiserArg, Quality,
    Reference, Schedule, ScopeArg, ScopeReport,
};
use super::outln;
use crate::data::Dataset;
use crate::device::Opened;
use crate::model_io::LoadedModel;
use crate::train::{self as host_train, CentreInit, FitConfig};
use crate::Error;
use hvae::protocol::{max_request_frame, TrainOptimiser, TrainScope, TrainSettings};
use hvae::train::samples::Policy;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::io::Write;

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioArg {
    /// Adapt a deployed model to a drifted sensor.
    Drift,
    /// Discover classes the host never saw: centres spawned from persistent novelty.
    NewClusters,
    /// Learn from nothing: a fresh small network trained on the stream in 48 KiB.
    Scratch,
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

/// The core's [`SegmenterAdapter`](hvae::train::adapt::SegmenterAdapter) on one stream of
/// the drift scenario, on the host (it is not on the device engine:
/// docs/device.md#scenarios says why).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdapterRun {
    /// `sudden` or `gradual`.
    pub stream: String,
    /// The adapted model on the drifted data.
    pub host: Quality,
    /// Its ACC over the oracle's.
    pub share_of_oracle: f64,
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
    /// The `SegmenterAdapter` on each stream (host only), beside the `segmenter-only`
    /// runs of a gradient optimiser.
    pub adapter: Vec<AdapterRun>,
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
/// adaptation scope). Each run starts from the deployed model: a device that loads
/// weights gets it loaded; one that cannot (the `adapt` program, which runs its
/// compiled-in weights) is replaced by a fresh one from `reopen` before every run but the
/// first (a qemu device starts again; a board must be reset by hand).
pub fn drift(
    opened: &mut Opened,
    reopen: &mut dyn FnMut() -> Result<Opened, Error>,
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
            ..deployed_fit()
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
    let optimiser = args.optimiser().to_wire(args);
    let order = permutation(data.len(), args.seed);
    let n = args.steps as usize;
    // As many samples per request as asked for and the device's receive buffer holds
    // (the `adapt` program on the micro:bit receives one at a time).
    let max_frame = device_info(&mut opened.device)?.max_frame as usize;
    let per_request = (1..=args.per_request)
        .rev()
        .find(|&p| max_request_frame(usize::from(p) * data.dim()) <= max_frame)
        .unwrap_or(1);
    let mut runs = Vec::new();
    let mut adapter = Vec::new();
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
                per_request,
                seed: args.seed,
            };
            let rows = (0..).map(|i| drift.apply(data.row(order[i % order.len()]), share(i)));
            let requests = schedule.requests_of(data.dim(), rows)?;
            if !runs.is_empty() && !loads_weights(&mut opened.device)? {
                *opened = reopen()?;
            }
            let (r, _) =
                Reference::Learn.run(&mut opened.device, model, &shifted, scope, &requests)?;
            // The same stream and settings through the core's `SegmenterAdapter`.
            if scope == TrainScope::SegmenterOnly
                && !matches!(optimiser, TrainOptimiser::OnlineKMeans { .. })
            {
                let host = segmenter_adapter(model, &requests, &shifted)?;
                adapter.push(AdapterRun {
                    stream: stream.to_string(),
                    host,
                    share_of_oracle: host.acc / oracle.acc,
                });
            }
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
        device: opened.device.name().to_string(),
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
        adapter,
        pass,
    })
}

/// Directions the host's `SegmenterAdapter` keeps: the engine's ring of samples.
const ADAPTER_CAP: usize = hvae::device::CAP;

/// The core's `SegmenterAdapter` fed `requests` as the engine takes them (each request's
/// samples, then its steps; the first request's settings, with the engine's
/// configuration for them: [`hvae::device::config`]), from `model`, with the engine's
/// seed: the model it leaves, scored on `data`. The encoder and the normalisation stay as
/// deployed; the adapter keeps the [`ADAPTER_CAP`] last directions `mu(x)`.
fn segmenter_adapter(
    model: &LoadedModel,
    requests: &[hvae::protocol::Request],
    data: &Dataset,
) -> Result<Quality, Error> {
    macro_rules! latents {
        ($($m:literal)*) => {
            match model.model.shape().latent {
                $($m => adapter_on::<$m>(model, requests, data),)*
                m => Err(Error::BadInput(format!(
                    "the SegmenterAdapter row is built for latent sizes up to 16 (this model's is {m})"
                ))),
            }
        };
    }
    latents!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// [`segmenter_adapter`] for a latent of `M`.
fn adapter_on<const M: usize>(
    model: &LoadedModel,
    requests: &[hvae::protocol::Request],
    data: &Dataset,
) -> Result<Quality, Error> {
    use hvae::protocol::Request;
    use hvae::train::adapt::{adapter_storage_len, SegmenterAdapter};
    use hvae::train::optim::state_len;
    use hvae::train::trainer::TrainError;
    let failed = |e: TrainError| Error::Failed(format!("the SegmenterAdapter failed: {e}"));
    let settings = match requests.first() {
        Some(Request::TrainBatch {
            settings: Some(s), ..
        }) => *s,
        _ => return Err(Error::Failed("a run without settings".to_string())),
    };
    let cfg = hvae::device::config(&settings)
        .ok_or_else(|| Error::BadInput("settings out of range".to_string()))?;
    let m = &model.model;
    let shape = *m.shape();
    let store = vec![0.0f32; adapter_storage_len(&shape, cfg.batch)];
    let optim = vec![0.0f32; state_len(cfg.optim.optimiser.kind(), shape.segmenter_len())];
    let mut a =
        SegmenterAdapter::<f32, M, ADAPTER_CAP, _, _>::new(m, cfg, store, optim).map_err(failed)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(hvae::device::SEED);
    let mut work = vec![0.0f32; shape.work_len()];
    for r in requests {
        let Request::TrainBatch { samples, steps, .. } = r else {
            continue;
        };
        for x in samples.chunks_exact(shape.input) {
            a.push(m, x, &mut work).map_err(failed)?;
        }
        for _ in 0..*steps {
            match a.step(&mut rng) {
                // A spike the guard rejected changed nothing.
                Ok(_) | Err(TrainError::Diverged) => {}
                Err(TrainError::NotEnoughSamples) => break,
                Err(e) => return Err(failed(e)),
            }
        }
    }
    let mut params = m.params().to_vec();
    let so = shape.segmenter_offset();
    params
        .get_mut(so..so + shape.segmenter_len())
        .ok_or_else(|| Error::Failed("the model lacks its segmenter".to_string()))?
        .copy_from_slice(a.segmenter());
    quality(params, model, data)
}

/// The device's `Info`.
fn device_info(dev: &mut hvae_devkit::Device) -> Result<hvae::protocol::DeviceInfo, Error> {
    dev.sync()
        .map_err(|e| Error::Failed(format!("{}: {e}", dev.name())))
}

/// Whether the device takes `LoadWeights`.
fn loads_weights(dev: &mut hvae_devkit::Device) -> Result<bool, Error> {
    Ok(device_info(dev)?.capabilities & hvae::protocol::CAP_LOAD != 0)
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
            "{:<8} {:<28} {} {:>9.3} {:>14} {:>9.1}",
            run.stream,
            run.scope,
            device_and_host(run.device, run.host),
            run.share_of_oracle,
            if run.bit_identical { "yes" } else { "no" },
            run.device_seconds
        )?;
    }
    for a in &r.adapter {
        outln!(
            out,
            "{:<8} {:<28} {:>16} {:>9.4}/{:.3} {:>9.3} {:>14}",
            a.stream,
            "segmenter-adapter (host)",
            "-",
            a.host.acc,
            a.host.nmi,
            a.share_of_oracle,
            "-"
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

/// Classes the host trains on in `new-clusters` (labels below this); the rest are new.
pub const KNOWN_CLASSES: i64 = 7;

/// Samples of the stream of known classes alone, on which nothing may spawn.
pub const KNOWN_STREAM: u32 = 10_000;

/// Least number of new classes that must get a centre of their own.
pub const NEW_CLASSES_BAR: usize = 2;

/// Least ACC on all classes after discovery.
pub const DISCOVERY_ACC_BAR: f64 = 0.85;

/// The new-clusters scenario's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewClustersReport {
    /// `new-clusters`.
    pub scenario: String,
    /// The device.
    pub device: String,
    /// The host model (trained on the known classes, unused slots for the rest) on
    /// every class.
    pub before: Quality,
    /// The novelty threshold sent to the device (the percentile of the known rows').
    pub novelty_threshold: f32,
    /// The spawn rule sent with it: at least `spawn_count` of the last `spawn_window`
    /// samples novel.
    pub spawn_count: u8,
    /// See `spawn_count`.
    pub spawn_window: u8,
    /// Samples a centre remembers (`--memory`).
    pub centre_memory: u16,
    /// Centres spawned on the stream of every class (the device's `Centre` events).
    pub spawned: usize,
    /// After the stream of every class with online k-means and the spawn rule, before
    /// re-learning, on every class.
    pub discovered: Quality,
    /// Passes over the data of the re-learning that a spawn starts (0: nothing spawned,
    /// nothing re-learnt).
    pub relearn_passes: u32,
    /// New classes whose rows mostly go to one centre that holds mostly them.
    pub new_classes_found: usize,
    /// At the end (after re-learning, when a centre was spawned), on every class.
    pub after: Quality,
    /// Centres spawned on the stream of the known classes alone.
    pub spawned_on_known: usize,
    /// Centres retired (starved or merged) on the stream of every class, and on the
    /// stream of the known classes (the device's `Centre` events).
    pub retired: [usize; 2],
    /// Device and host weights bit for bit the same, on both streams.
    pub bit_identical: bool,
    /// Bar on `new_classes_found`.
    pub new_classes_bar: usize,
    /// Bar on the ACC after discovery.
    pub acc_bar: f64,
    /// Every bar met (and no spawn on the known classes).
    pub pass: bool,
}

/// The model trained on the host on the known classes, with `K` slots of which the
/// known classes' take the first and the rest are unused (centre 0's copy, log-weight
/// [`hvae::train::centres::UNUSED_LOG_WEIGHT`]).
fn known_model(like: &LoadedModel, data: &Dataset, seed: u64) -> Result<LoadedModel, Error> {
    let shape = hvae::device::scratch_shape(like.model.shape());
    let labels = data
        .labels()
        .ok_or_else(|| Error::BadInput("the data has no label column".to_string()))?;
    let known: Vec<f32> = data
        .rows()
        .zip(labels)
        .filter(|(_, &l)| l < KNOWN_CLASSES)
        .flat_map(|(r, _)| r.iter().copied())
        .collect();
    let mut small = shape;
    small.clusters = KNOWN_CLASSES as usize;
    let cfg = FitConfig {
        seed,
        ..deployed_fit()
    };
    let m = host_train::fit(small, &known, None, &cfg, |_, _| {})
        .map_err(|e| Error::Failed(format!("training on the known classes failed: {e}")))?;
    let (m_lat, k_small, k) = (shape.latent, small.clusters, shape.clusters);
    let p = m.params();
    let mut params = p[..small.segmenter_offset()].to_vec();
    let seg = &p[small.segmenter_offset()..small.decoder_offset()];
    // Centres: the known ones, then copies of the first.
    params.extend_from_slice(&seg[..k_small * m_lat]);
    for _ in k_small..k {
        params.extend_from_slice(&seg[..m_lat]);
    }
    params.push(seg[k_small * m_lat]);
    params.extend_from_slice(&seg[k_small * m_lat + 1..]);
    params.extend(std::iter::repeat_n(
        hvae::train::centres::UNUSED_LOG_WEIGHT,
        k - k_small,
    ));
    params.extend_from_slice(&p[small.decoder_offset()..]);
    let model = hvae::Model::new(shape, params)
        .map_err(|e| Error::Failed(format!("cannot widen the model: {e}")))?;
    as_loaded(&model)
}

/// `model` as a device loads it: its blob read back (the CRC a device reports).
fn as_loaded(model: &hvae::VecModel<f32>) -> Result<LoadedModel, Error> {
    let bytes = crate::model_io::to_bytes(model)
        .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?;
    crate::model_io::from_bytes(&bytes)
        .map_err(|e| Error::Failed(format!("cannot re-read the model: {e}")))
}

/// Slots in use in `params` of `shape`.
fn slots_in_use(shape: &hvae::Shape, params: &[f32]) -> Vec<usize> {
    let seg = &params[shape.segmenter_offset()..shape.decoder_offset()];
    (0..shape.clusters)
        .filter(|&k| hvae::train::centres::in_use(shape, seg, k))
        .collect()
}

/// Runs the new-clusters scenario on an open device.
pub fn new_clusters(
    dev: &mut hvae_devkit::Device,
    like: &LoadedModel,
    data: &Dataset,
    args: &DeviceTrainArgs,
) -> Result<NewClustersReport, Error> {
    let model = known_model(like, data, args.seed)?;
    let shape = *model.model.shape();
    let labels = data
        .labels()
        .ok_or_else(|| Error::BadInput("the data has no label column".to_string()))?;
    // The novelty threshold: a high percentile over the known rows.
    let mut work = vec![0.0f32; shape.work_len()];
    let mut nov: Vec<f32> = Vec::new();
    for (r, &l) in data.rows().zip(labels) {
        if l < KNOWN_CLASSES {
            let s = model
                .model
                .segment(r, &mut work)
                .map_err(|e| Error::Failed(format!("the model fails on a row: {e}")))?;
            nov.push(s.novelty());
        }
    }
    if nov.is_empty() || labels.iter().any(|&l| l < 0) {
        return Err(Error::BadInput(format!(
            "new-clusters needs rows of classes 0-{} and no negative label",
            KNOWN_CLASSES - 1
        )));
    }
    nov.sort_by(f32::total_cmp);
    let at = ((args.novelty_percentile.clamp(0.0, 100.0) / 100.0) * (nov.len() - 1) as f64).round()
        as usize;
    let threshold = nov[at.min(nov.len() - 1)];
    let centre_memory = args.centre_memory(true);
    let settings = TrainSettings {
        scope: TrainScope::SegmenterOnly,
        optimiser: TrainOptimiser::OnlineKMeans {
            memory: centre_memory,
            spawn_above: threshold,
            spawn_window: args.spawn_window,
            spawn_count: args.spawn_count,
        },
        lr: 1.0,
        batch: 1,
    };
    let before = quality(model.model.params().to_vec(), &model, data)?;
    let order = permutation(data.len(), args.seed);
    let all = Schedule {
        settings,
        steps: args.steps,
        per_request: args.per_request,
        seed: args.seed,
    };
    let rows = (0..).map(|i| data.row(order[i % order.len()]).to_vec());
    let requests = all.requests_of(data.dim(), rows)?;
    let (r_all, params) =
        Reference::Scratch.run(dev, &model, data, TrainScope::SegmenterOnly, &requests)?;
    // Spawns as the device reported them (its events), checked against its weights.
    let spawned = r_all.spawn_events;
    let used = slots_in_use(&shape, &params);
    check_spawns(&r_all, used.len())?;
    let discovered = r_all.device;
    // A spawn says the deployed model no longer covers the stream: the whole model is
    // learnt again on the device, from its weights, on the stream.
    let mut bit_identical = r_all.bit_identical;
    let (after, params, relearn_passes) = if spawned > 0 {
        let (r, p) = relearn(dev, &shape, params, data, args)?;
        bit_identical &= r.bit_identical;
        (r.device, p, args.passes)
    } else {
        (r_all.device, params, 0)
    };
    // Which new classes have a centre of their own: the centre most of the class's rows
    // go to holds mostly that class.
    let adapted = hvae::Model::new(shape, params)
        .map_err(|e| Error::Failed(format!("the trained weights are not a model: {e}")))?;
    let seg = super::eval::segment_all(&adapted, data)?;
    let k = shape.clusters;
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut table = vec![vec![0usize; k]; classes];
    for (&l, &c) in labels.iter().zip(&seg.labels) {
        table[l as usize][c] += 1;
    }
    let mut found = 0;
    for class in KNOWN_CLASSES as usize..table.len() {
        let row = &table[class];
        let total: usize = row.iter().sum();
        let Some((best, &n)) = row.iter().enumerate().max_by_key(|(_, &n)| n) else {
            continue;
        };
        let column: usize = table.iter().map(|r| r[best]).sum();
        if 2 * n > total && 2 * n > column {
            found += 1;
        }
    }
    // The stream of the known classes alone.
    let known_rows: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| labels[i] < KNOWN_CLASSES)
        .collect();
    let known = Schedule {
        steps: KNOWN_STREAM,
        ..all
    };
    let rows = (0..).map(|i| data.row(known_rows[i % known_rows.len()]).to_vec());
    let requests = known.requests_of(data.dim(), rows)?;
    let (r_known, params_known) =
        Reference::Scratch.run(dev, &model, data, TrainScope::SegmenterOnly, &requests)?;
    let spawned_on_known = r_known.spawn_events;
    check_spawns(&r_known, slots_in_use(&shape, &params_known).len())?;
    let bit_identical = bit_identical && r_known.bit_identical;
    let pass = bit_identical
        && found >= NEW_CLASSES_BAR
        && after.acc >= DISCOVERY_ACC_BAR
        && spawned_on_known == 0;
    Ok(NewClustersReport {
        scenario: "new-clusters".to_string(),
        device: dev.name().to_string(),
        before,
        novelty_threshold: threshold,
        spawn_count: args.spawn_count,
        spawn_window: args.spawn_window,
        centre_memory,
        spawned,
        discovered,
        relearn_passes,
        new_classes_found: found,
        after,
        spawned_on_known,
        retired: [r_all.retire_events, r_known.retire_events],
        bit_identical,
        new_classes_bar: NEW_CLASSES_BAR,
        acc_bar: DISCOVERY_ACC_BAR,
        pass,
    })
}

/// Learns the whole model again on the device from `params` (the weights after the
/// stream that spawned a centre): `--passes` over the data in a new order, the scratch
/// engine's Full scope (its warm-up, then every centre placed afresh by k-means++ on the
/// mean directions of its memory, then joint training), its optimiser and `--lr` (by
/// default the `scratch` scenario's). The host engine replays the same requests.
fn relearn(
    dev: &mut hvae_devkit::Device,
    shape: &hvae::Shape,
    params: Vec<f32>,
    data: &Dataset,
    args: &DeviceTrainArgs,
) -> Result<(ScopeReport, Vec<f32>), Error> {
    let model = hvae::Model::new(*shape, params)
        .map_err(|e| Error::Failed(format!("the trained weights are not a model: {e}")))?;
    let model = as_loaded(&model)?;
    let settings = TrainSettings {
        scope: TrainScope::Full,
        optimiser: TrainOptimiser::FactoredRms,
        lr: args.lr.unwrap_or(RELEARN_LR),
        batch: args.batch,
    };
    let schedule = Schedule {
        settings,
        steps: args.passes.saturating_mul(data.len() as u32),
        per_request: args.per_request,
        seed: args.seed + 1,
    };
    let requests = schedule.requests(data)?;
    Reference::Scratch.run(dev, &model, data, TrainScope::Full, &requests)
}

/// The device's spawn and retirement events agree with the slots its weights use.
fn check_spawns(r: &ScopeReport, used: usize) -> Result<(), Error> {
    let (spawned, retired) = (r.spawn_events, r.retire_events);
    if KNOWN_CLASSES as usize + spawned == used + retired {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "the device reported {spawned} spawned and {retired} retired centres, but its \
             weights use {used} slots of which {KNOWN_CLASSES} were trained on the host"
        )))
    }
}

/// The device's and the host's ACC/NMI, side by side in a run's row.
fn device_and_host(device: Quality, host: Quality) -> String {
    format!(
        "{:>9.4}/{:.3} {:>9.4}/{:.3}",
        device.acc, device.nmi, host.acc, host.nmi
    )
}

/// One row of a scenario's table: what is measured, the value, the bar it must meet
/// (empty where there is none).
fn bar_row(
    what: impl Into<String>,
    measured: impl std::fmt::Display,
    bar: impl Into<String>,
) -> [String; 3] {
    [what.into(), measured.to_string(), bar.into()]
}

/// Prints a scenario's table of measured values and bars under its header, the first
/// two columns `widths` wide.
fn print_bars(
    out: &mut dyn Write,
    (what, measured): (usize, usize),
    rows: &[[String; 3]],
) -> Result<(), Error> {
    outln!(out, "{:<what$} {:>measured$} {:>10}", "", "measured", "bar")?;
    for [w, m, b] in rows {
        outln!(out, "{w:<what$} {m:>measured$} {b:>10}")?;
    }
    Ok(())
}

/// Prints the new-clusters scenario's table.
pub fn print_new_clusters(r: &NewClustersReport, out: &mut dyn Write) -> Result<(), Error> {
    outln!(
        out,
        "scenario new-clusters on {}: the host trains on classes 0-{} with unused slots for \
         the rest; novel above {:.4} (a percentile of the known rows' novelty), a spawn when \
         {} of the last {} samples are novel, centres remembering {} samples",
        r.device,
        KNOWN_CLASSES - 1,
        r.novelty_threshold,
        r.spawn_count,
        r.spawn_window,
        r.centre_memory,
    )?;
    let q = |q: Quality| format!("{:.4}/{:.3}", q.acc, q.nmi);
    let rows = [
        bar_row("before, every class (ACC/NMI)", q(r.before), ""),
        bar_row(
            "after the stream of every class (ACC/NMI)",
            q(r.discovered),
            "",
        ),
        bar_row("centres spawned", r.spawned, ""),
        bar_row(
            format!("after re-learning, {} passes (ACC/NMI)", r.relearn_passes),
            q(r.after),
            format!(">= {DISCOVERY_ACC_BAR}"),
        ),
        bar_row(
            "new classes with a centre of their own",
            r.new_classes_found,
            format!(">= {NEW_CLASSES_BAR}"),
        ),
        bar_row(
            format!("centres spawned on {KNOWN_STREAM} samples of known classes"),
            r.spawned_on_known,
            "0",
        ),
        bar_row(
            "centres retired (starved or merged): every class / known",
            format!("{} / {}", r.retired[0], r.retired[1]),
            "",
        ),
        bar_row(
            "device and host bit-identical",
            if r.bit_identical { "yes" } else { "no" },
            "yes",
        ),
    ];
    print_bars(out, (52, 12), &rows)?;
    outln!(out, "{}", if r.pass { "PASS" } else { "FAIL" })
}

/// Hidden units of the `scratch` scenario's network (the core's, which the
/// `learn_scratch` program is built with).
pub use hvae::device::SCRATCH_HIDDEN;

/// Most bytes of training state in the `scratch` scenario (parameters, gradient,
/// optimiser moments, memory of past samples, workspace).
pub const SCRATCH_RAM_BAR: usize = 48 * 1024;

/// Least mean ACC over the stream orders in the `scratch` scenario.
pub const SCRATCH_ACC_BAR: f64 = 0.85;

/// Stream orders of the `scratch` scenario (seeds `--seed`, `--seed + 1`, ...).
pub const SCRATCH_ORDERS: u64 = 3;

/// Learning rate of the `scratch` scenario (without --lr).
pub const SCRATCH_LR: f32 = 0.008;

/// Learning rate of the `new-clusters` scenario's re-learning (without --lr).
pub const RELEARN_LR: f32 = 0.006;

/// The `scratch` scenario's architecture: `like`'s with [`SCRATCH_HIDDEN`] hidden units
/// ([`hvae::device::scratch_shape`]), a fresh initialisation with seed 0 (as the
/// `learn_scratch` program boots).
pub fn scratch_model(like: &LoadedModel) -> Result<LoadedModel, Error> {
    let shape = hvae::device::scratch_shape(like.model.shape());
    let m =
        hvae::Model::<f32, Vec<f32>>::with_shape(shape, &mut Xoshiro256PlusPlus::seed_from_u64(0))
            .map_err(|e| Error::Failed(format!("cannot initialise the scratch model: {e}")))?;
    as_loaded(&m)
}

/// One stream order of the scratch scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScratchRun {
    /// Seed of the stream order.
    pub order_seed: u64,
    /// The device's model.
    pub device: Quality,
    /// The host engine's model.
    pub host: Quality,
    /// Device and host weights bit for bit the same.
    pub bit_identical: bool,
    /// Seconds of the device session.
    pub device_seconds: f64,
}

/// RAM as a device reports it in `Info`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DeviceRam {
    /// Static RAM (`.data` + `.bss`): the parameters, the trainer's buffers, the
    /// checkpoint and frame state.
    pub ram_static: u32,
    /// Peak stack since reset (the engine, with its memory of samples, lives there).
    pub stack_peak: u32,
}

impl DeviceRam {
    /// All the RAM the program used: static and peak stack.
    pub fn total(&self) -> u32 {
        self.ram_static.saturating_add(self.stack_peak)
    }
}

/// The scratch scenario's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScratchReport {
    /// `scratch`.
    pub scenario: String,
    /// The device.
    pub device: String,
    /// Layer sizes, e.g. `64-24-8, K 10`.
    pub architecture: String,
    /// Parameters of the network.
    pub params: usize,
    /// The optimiser (Adam, or SGD with momentum) and its learning rate.
    pub optimiser: String,
    /// Passes over the data per stream order.
    pub passes: u32,
    /// Samples (and steps) per stream order.
    pub samples: u32,
    /// Samples the device remembers (as bytes).
    pub memory: usize,
    /// How the memory keeps them (`hvae::device::SCRATCH_POLICY`): "a sliding random
    /// sample", "a reservoir" or "a ring".
    pub memory_kept: String,
    /// Bytes of training state (the engine's count, [`hvae::device::Engine::train_ram`]).
    pub train_ram: usize,
    /// Bar on `train_ram`.
    pub ram_bar: usize,
    /// The device's own report after the last order (its `Info`: static RAM and peak
    /// stack; `None` when it measures neither, as the host engine).
    pub device_ram: Option<DeviceRam>,
    /// Every stream order.
    pub runs: Vec<ScratchRun>,
    /// Mean over the orders of the device's ACC and NMI.
    pub mean: Quality,
    /// The worst order's ACC and NMI.
    pub worst: Quality,
    /// The same architecture trained by `hvae train` on the host (defaults, seed
    /// `--seed`).
    pub host_train: Quality,
    /// Bar on the mean ACC.
    pub acc_bar: f64,
    /// Every bar met and every run bit-identical.
    pub pass: bool,
}

/// Runs the scratch scenario on an open device (the scratch engine: `learn-scratch`).
pub fn scratch(
    dev: &mut hvae_devkit::Device,
    like: &LoadedModel,
    data: &Dataset,
    args: &DeviceTrainArgs,
) -> Result<ScratchReport, Error> {
    let arch = scratch_model(like)?;
    let model = with_fitted_normalisation(&fresh(&arch, args.init_seed)?, data)?;
    let shape = *model.model.shape();
    let settings = TrainSettings {
        scope: TrainScope::Full,
        optimiser: match args
            .optimiser
            .unwrap_or(OptimiserArg::of_kind(hvae::device::SCRATCH_OPTIM))
        {
            OptimiserArg::OnlineKMeans => {
                return Err(Error::BadInput(
                    "the scratch scenario trains with a gradient optimiser: --optimiser adam, \
                     factored, factored-rms or sgd"
                        .to_string(),
                ))
            }
            o => o.to_wire(args),
        },
        lr: args.lr.unwrap_or(SCRATCH_LR),
        batch: args.batch,
    };
    if hvae::device::config(&settings).is_none() {
        return Err(Error::BadInput(format!(
            "training settings out of range: lr {} (> 0), batch {} (1..={}), momentum {} ([0, 1))",
            settings.lr,
            args.batch,
            hvae::device::MAX_BATCH,
            args.momentum
        )));
    }
    let samples = args.passes.saturating_mul(data.len() as u32);
    let mut runs = Vec::new();
    let mut ram = 0;
    for i in 0..SCRATCH_ORDERS {
        let schedule = Schedule {
            settings,
            steps: samples,
            per_request: args.per_request,
            seed: args.seed + i,
        };
        let requests = schedule.requests(data)?;
        let (r, _) = Reference::Scratch.run(dev, &model, data, TrainScope::Full, &requests)?;
        ram = ram.max(r.train_ram.unwrap_or(0));
        runs.push(ScratchRun {
            order_seed: args.seed + i,
            device: r.device,
            host: r.host,
            bit_identical: r.bit_identical,
            device_seconds: r.device_seconds,
        });
    }
    let info = dev
        .info()
        .map_err(|e| Error::Failed(format!("{}: Info after training: {e}", dev.name())))?;
    let device_ram = (info.ram_static > 0).then_some(DeviceRam {
        ram_static: info.ram_static,
        stack_peak: info.stack_peak,
    });
    let n = runs.len().max(1) as f64;
    let mean = Quality {
        acc: runs.iter().map(|r| r.device.acc).sum::<f64>() / n,
        nmi: runs.iter().map(|r| r.device.nmi).sum::<f64>() / n,
    };
    let worst = Quality {
        acc: runs
            .iter()
            .map(|r| r.device.acc)
            .fold(f64::INFINITY, f64::min),
        nmi: runs
            .iter()
            .map(|r| r.device.nmi)
            .fold(f64::INFINITY, f64::min),
    };
    let host_train = {
        let cfg = FitConfig {
            seed: args.seed,
            ..FitConfig::default()
        };
        let m = host_train::fit(shape, data.features(), None, &cfg, |_, _| {})
            .map_err(|e| Error::Failed(format!("the host's training failed: {e}")))?;
        let loaded = LoadedModel {
            model: m,
            crc: 0,
            bytes: 0,
        };
        quality(loaded.model.params().to_vec(), &loaded, data)?
    };
    let pass = mean.acc >= SCRATCH_ACC_BAR
        && ram > 0
        && ram <= SCRATCH_RAM_BAR
        && runs.iter().all(|r| r.bit_identical);
    Ok(ScratchReport {
        scenario: "scratch".to_string(),
        device: dev.name().to_string(),
        architecture: format!(
            "{}-{}-{}, K {}",
            shape.input, SCRATCH_HIDDEN, shape.latent, shape.clusters
        ),
        params: shape.param_len(),
        optimiser: match settings.optimiser {
            TrainOptimiser::Sgd { momentum } => format!(
                "SGD, momentum {momentum}, lr {}, {} anchors per step, layer by layer",
                settings.lr, args.batch
            ),
            TrainOptimiser::Factored => format!(
                "Adam with a factored second moment, lr {}, {} anchors per step, layer by layer",
                settings.lr, args.batch
            ),
            TrainOptimiser::FactoredRms => format!(
                "factored second moment without a first moment, lr {}, {} anchors per step, \
                 layer by layer",
                settings.lr, args.batch
            ),
            _ => format!(
                "Adam, lr {}, {} anchors per step, layer by layer",
                settings.lr, args.batch
            ),
        },
        passes: args.passes,
        samples,
        memory: hvae::device::SCRATCH_MEM,
        memory_kept: match hvae::device::SCRATCH_POLICY {
            Policy::Ring => "a ring",
            Policy::Reservoir => "a reservoir",
            Policy::Sliding => "a sliding random sample",
        }
        .to_string(),
        train_ram: ram,
        ram_bar: SCRATCH_RAM_BAR,
        device_ram,
        runs,
        mean,
        worst,
        host_train,
        acc_bar: SCRATCH_ACC_BAR,
        pass,
    })
}

/// Prints the scratch scenario's table.
pub fn print_scratch(r: &ScratchReport, out: &mut dyn Write) -> Result<(), Error> {
    outln!(
        out,
        "scenario scratch on {}: {} ({} parameters), fresh initialisation; {}; {} passes \
         ({} samples) per stream order; {} of {} samples as bytes",
        r.device,
        r.architecture,
        r.params,
        r.optimiser,
        r.passes,
        r.samples,
        r.memory_kept,
        r.memory
    )?;
    outln!(
        out,
        "{:<10} {:>16} {:>16} {:>14} {:>9}",
        "order",
        "device ACC/NMI",
        "host ACC/NMI",
        "bit-identical",
        "device s"
    )?;
    for run in &r.runs {
        outln!(
            out,
            "{:<10} {} {:>14} {:>9.1}",
            run.order_seed,
            device_and_host(run.device, run.host),
            if run.bit_identical { "yes" } else { "no" },
            run.device_seconds
        )?;
    }
    let q = |q: Quality| format!("{:.4}/{:.3}", q.acc, q.nmi);
    let mut rows = vec![
        bar_row(
            "mean over the orders (ACC/NMI)",
            q(r.mean),
            format!(">= {}", r.acc_bar),
        ),
        bar_row("worst order (ACC/NMI)", q(r.worst), ""),
        bar_row(
            "training state, bytes",
            r.train_ram,
            format!("<= {}", r.ram_bar),
        ),
    ];
    if let Some(d) = r.device_ram {
        rows.push(bar_row(
            format!(
                "device RAM: static {} + peak stack {}",
                d.ram_static, d.stack_peak
            ),
            d.total(),
            "",
        ));
    }
    rows.push(bar_row(
        "same architecture, `hvae train` on the host",
        q(r.host_train),
        "",
    ));
    print_bars(out, (44, 14), &rows)?;
    outln!(out, "{}", if r.pass { "PASS" } else { "FAIL" })
}

/// How the scenarios train a model on the host (the deployed model of `new-clusters`,
/// the oracle of `drift`): `hvae train`'s defaults without the neighbour contrast and
/// with the centres from k-means on the mean directions alone, for all its epochs (no
/// bound on the steps), the training the scenarios' bars and tables were set with
/// (docs/device.md).
fn deployed_fit() -> FitConfig {
    let mut cfg = FitConfig {
        init: CentreInit::Latent,
        kmeans_restarts: 1,
        max_steps: 0,
        ..FitConfig::default()
    };
    cfg.loss.contrast = 0.0;
    cfg
}
