//! `hvae device-train`: online training on the device (the firmware's `learn` program),
//! compared with the same schedule run on the host by the same engine.

use super::connection::ConnectionArgs;
use super::outln;
use super::scenario::{self, ScenarioArg};
use crate::data::{self, Dataset};
use crate::device::learn_host::{adapt_learner, host_learner, scratch_learner, HostEngine};
use crate::device::{self, Device, DeviceError, DeviceSpec, Timeouts};
use crate::metrics;
use crate::model_io::{self, LoadedModel};
use crate::Error;
use hvae::protocol::{
    CentreChange, Request, Response, ShapeInfo, TrainOptimiser, TrainScope, TrainSettings,
    CAP_LOAD, CAP_TRAIN, MAX_SAMPLE,
};
use hvae::train::centres::MAX_NOVELTY;
use hvae::Model;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Long help of the subcommand.
pub const LONG_ABOUT: &str = "Train on the device and compare with the host.\n\n\
    Starts the firmware's `learn` program (under qemu, or on a board on a serial port), and \
    for each scope: loads the starting weights (for Full, the initial model: --model, or by \
    default a fresh seeded initialisation of the firmware model's architecture; for the \
    adaptation scopes after a Full run, the Full run's result; the input normalisation is \
    fitted to the data unless --keep-normalisation), streams the data rows in a \
    seeded order as TrainBatch requests (--per-request samples and as many optimiser steps \
    each, --steps steps in all; the first request carries the settings: scope, optimiser, \
    learning rate, anchors per step), reads the whole parameter vector back (ReadWeights, \
    decoder included) and scores it on the data (ACC, NMI against the `label` column).\n\n\
    The same requests go to the firmware's learn engine compiled for the host (the same \
    source file, the same core, the same seed): the host's run is the reference. Reported \
    per scope: the device's and the host's ACC and NMI, whether the weights are \
    bit-identical (and if not, how many differ and by how much, and the first request whose \
    answer differed), and the time taken.\n\n\
    Passes when the Full-scope ACC on the device is within 0.03 of the host's; exit status \
    1 otherwise, or when the device misbehaves.\n\n\
    --scenario drift instead adapts a deployed model (--model, by default the firmware's \
    trained one) to a drifted sensor: per-feature gains in [1 - G, 1 + G] (--drift-gain) \
    and offsets within O standard deviations (--drift-offset), seeded by --seed, streamed \
    sudden and gradual; each adaptation scope (--scope all) learns from each stream on the \
    device and on the host engine, and is scored on the drifted data beside the frozen \
    model and an oracle trained on the host on the drifted data. Bars: the drift costs the \
    frozen model >= 0.10 ACC, segmenter-and-normalisation reaches >= 95% of the oracle's \
    ACC on both streams, every run bit-identical; exit status 1 when one is missed. \
    --device host runs the firmware's engine compiled for this machine (no qemu).\n\n\
    --scenario scratch trains a fresh 64-32-8 network from the stream alone (--passes \
    passes over the data, 3 stream orders from --seed) on the scratch engine (by default \
    a factored second moment without a first moment, --optimiser factored-rms; the \
    backward pass and the update layer by layer; a sliding random sample of 240 past \
    samples stored as bytes), within 48 KiB of training \
    state; bars: mean ACC >= 0.85, the engine's training RAM <= 48 KiB, every run \
    bit-identical; reported beside `hvae train` on the same network. On qemu or a board the \
    device runs the firmware's learn_scratch program, and its RAM report (static + peak \
    stack) is printed too.\n\n\
    --scenario new-clusters deploys a model the host trained on the digits 0-6 (the \
    scratch network, 10 slots, 3 unused) on learn_scratch; the device streams every class \
    with online k-means and the spawn rule (--optimiser online-k-means, --steps, \
    --novelty-percentile, --spawn-count, --spawn-window; --memory, 1000 here: a deployed \
    centre moves slower than novelty takes to persist), and a spawn starts the \
    re-learning of the whole model on the device (--passes, the scratch engine's Full \
    scope: every centre placed afresh on its memory); then 10,000 samples of the known \
    classes. Bars: at least 2 of the 3 new classes with a centre of their own, ACC >= 0.85 \
    on every class, no spawn on the known classes, every run bit-identical.";

/// Training scopes on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// Every parameter.
    Full,
    /// Encoder and segmenter (decoder frozen).
    EncoderAndSegmenter,
    /// Centres and weights only.
    SegmenterOnly,
    /// Centres and weights, and the input normalisation follows the stream.
    SegmenterAndNormalisation,
    /// Full, encoder-and-segmenter and segmenter-only, one after the other.
    All,
}

/// Optimisers on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimiserArg {
    /// Adam (default betas).
    Adam,
    /// Adam with a factored second moment (a running mean of the squared gradient per
    /// row and per column of each weight matrix).
    Factored,
    /// The factored second moment without a first moment.
    FactoredRms,
    /// SGD with --momentum.
    Sgd,
    /// No gradient: online k-means of the centres, each sample moving the centre of its
    /// label by 1 / --memory (segmenter scopes only).
    OnlineKMeans,
}

impl OptimiserArg {
    /// The optimiser of this kind.
    pub fn of_kind(kind: hvae::OptimKind) -> Self {
        match kind {
            hvae::OptimKind::Adam => OptimiserArg::Adam,
            hvae::OptimKind::Factored => OptimiserArg::Factored,
            hvae::OptimKind::FactoredRms => OptimiserArg::FactoredRms,
            hvae::OptimKind::Sgd => OptimiserArg::Sgd,
        }
    }

    /// The optimiser on the wire, with the settings of `args`.
    pub fn to_wire(self, args: &DeviceTrainArgs) -> TrainOptimiser {
        match self {
            OptimiserArg::Adam => TrainOptimiser::Adam,
            OptimiserArg::Factored => TrainOptimiser::Factored,
            OptimiserArg::FactoredRms => TrainOptimiser::FactoredRms,
            OptimiserArg::Sgd => TrainOptimiser::Sgd {
                momentum: args.momentum,
            },
            OptimiserArg::OnlineKMeans => TrainOptimiser::OnlineKMeans {
                memory: args.centre_memory(args.spawn_above < MAX_NOVELTY),
                spawn_above: args.spawn_above,
                spawn_window: args.spawn_window,
                spawn_count: args.spawn_count,
            },
        }
    }
}

/// Arguments of `hvae device-train`.
#[derive(Debug, clap::Args)]
pub struct DeviceTrainArgs {
    /// The device: host (the firmware's engine compiled for this machine), qemu,
    /// qemu:mps2-an386, qemu:microbit or serial:PATH.
    #[arg(long, value_name = "DEVICE", value_parser = DeviceSpec::parse)]
    pub device: DeviceSpec,
    /// The firmware program: `learn` (every scope and optimiser) or `adapt` (online
    /// k-means of the centres, for parts without the RAM of a trainer; the inference
    /// weights alone, no weight load). Default: `adapt` on qemu:microbit, `learn`
    /// elsewhere.
    #[arg(long, value_enum, value_name = "PROGRAM")]
    pub program: Option<ProgramArg>,
    /// Initial model (default: a fresh initialisation, seeded by --init-seed, of the
    /// architecture of the firmware's compiled-in model firmware/model/digits.hvae: Full
    /// scope then learns from scratch on the device).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Seed of the fresh initial model (without --model).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub init_seed: u64,
    /// Training data with a `label` column (default: the bundled digits).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Which scope(s) to train.
    #[arg(long, value_enum, default_value_t = ScopeArg::All)]
    pub scope: ScopeArg,
    /// Optimiser steps in all, per scope.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub steps: u32,
    /// Samples (and steps) per TrainBatch request.
    #[arg(long, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub per_request: u16,
    /// Optimiser (default: adam; for --scenario scratch, the scratch engine's,
    /// `hvae::device::SCRATCH_OPTIM`).
    #[arg(long, value_enum)]
    pub optimiser: Option<OptimiserArg>,
    /// Momentum of SGD.
    #[arg(long, default_value_t = 0.9, value_name = "M")]
    pub momentum: f32,
    /// Samples a centre remembers, with --optimiser online-k-means (default 100; 1000
    /// when centres can spawn, --spawn-above below 2 or --scenario new-clusters: a centre
    /// must move slower than novelty takes to persist, docs/device.md#scenarios).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub memory: Option<u16>,
    /// With --optimiser online-k-means: novelty above which a sample is novel (it moves
    /// no centre; 2 or more: never).
    #[arg(long, default_value_t = MAX_NOVELTY, value_name = "T")]
    pub spawn_above: f32,
    /// With --optimiser online-k-means: a centre is spawned into an unused slot when at
    /// least --spawn-count of the last --spawn-window samples were novel.
    #[arg(long, default_value_t = 128, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=128))]
    pub spawn_window: u8,
    /// `new-clusters`: the percentile of the known rows' novelty that makes a sample
    /// novel on the device.
    #[arg(long, default_value_t = 99.0, value_name = "P")]
    pub novelty_percentile: f64,
    /// See --spawn-window.
    #[arg(long, default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..))]
    pub spawn_count: u8,
    /// Learning rate (default 1e-3; with --scenario drift 1e-4: an adaptation refines a
    /// trained model, and the 32-sample buffer's cluster loss pulls a good segmenter apart
    /// at 1e-3, docs/device.md#scenarios; scratch 0.008, new-clusters' re-learning 0.006).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,
    /// Anchors per step (at most the firmware's 8).
    #[arg(long, default_value_t = 8, value_name = "B")]
    pub batch: u8,
    /// Seed of the order in which the rows are streamed.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Keep the initial model's input normalisation (default: fit it to the data's
    /// per-feature mean and deviation first, as `hvae train` does).
    #[arg(long)]
    pub keep_normalisation: bool,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write each scope's device-trained model here (`device-<scope>.hvae`).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Firmware, baud rate and answer timeout.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Run a scenario instead (a deployed model: --model, by default the firmware's
    /// trained model; --scope all means every adaptation scope).
    #[arg(long, value_enum, value_name = "NAME")]
    pub scenario: Option<ScenarioArg>,
    /// `scratch`: passes over the data per stream order; `new-clusters`: passes of the
    /// re-learning a spawn starts.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub passes: u32,
    /// `drift`: per-feature gains uniform in [1 - G, 1 + G].
    #[arg(long, default_value_t = 0.3, value_name = "G")]
    pub drift_gain: f32,
    /// `drift`: per-feature offsets uniform in [-O, O] standard deviations.
    #[arg(long, default_value_t = 2.0, value_name = "O")]
    pub drift_offset: f32,
}

impl DeviceTrainArgs {
    /// The optimiser asked for, Adam by default.
    pub fn optimiser(&self) -> OptimiserArg {
        self.optimiser.unwrap_or(OptimiserArg::Adam)
    }

    /// The centres' memory: `--memory`, or by default [`SPAWN_MEMORY`] when centres can
    /// `spawn`, [`CENTRE_MEMORY`] when they cannot.
    pub fn centre_memory(&self, spawn: bool) -> u16 {
        self.memory
            .unwrap_or(if spawn { SPAWN_MEMORY } else { CENTRE_MEMORY })
    }

    /// The arguments of `hvae device-train` given `argv` (after the subcommand's name):
    /// the command line's defaults for everything else.
    pub fn parse_from<I, T>(argv: I) -> Result<DeviceTrainArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: DeviceTrainArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("device-train"))
            .chain(argv.into_iter().map(Into::into));
        <Command as clap::Parser>::try_parse_from(argv).map(|c| c.args)
    }
}

/// Scores of one model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// Clustering accuracy (Hungarian).
    pub acc: f64,
    /// Normalised mutual information.
    pub nmi: f64,
}

/// One scope's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScopeReport {
    /// The scope.
    pub scope: String,
    /// Steps the device took.
    pub steps: u32,
    /// The device-trained model's scores.
    pub device: Quality,
    /// The host-trained model's scores.
    pub host: Quality,
    /// |device ACC - host ACC|.
    pub acc_diff: f64,
    /// Every parameter bit-identical.
    pub bit_identical: bool,
    /// Parameters whose bits differ.
    pub params_differing: usize,
    /// Largest |device - host| parameter difference.
    pub max_abs_param_diff: f64,
    /// First request (0-based) whose answers differed, if any.
    pub first_divergent_request: Option<usize>,
    /// Centres the device reported spawning ([`Response::Centre`] events).
    pub spawn_events: usize,
    /// Centres the device reported retiring, starved or merged ([`Response::Centre`]
    /// events).
    pub retire_events: usize,
    /// Loss of the device's last step.
    pub final_loss: f32,
    /// Seconds of the device session (load, stream, read back).
    pub device_seconds: f64,
    /// Seconds of the host reference.
    pub host_seconds: f64,
    /// Bytes of the training's state in the host engine ([`hvae::device::Engine::train_ram`]:
    /// parameters, gradient, workspace, optimiser moments, memory of past samples).
    pub train_ram: Option<usize>,
}

/// The report of `hvae device-train`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceTrainReport {
    /// Full-scope ACC within the tolerance of the host's (true when Full was not run).
    pub pass: bool,
    /// The device.
    pub device: String,
    /// Tolerance on |device ACC - host ACC| for Full.
    pub acc_tolerance: f64,
    /// Per scope.
    pub scopes: Vec<ScopeReport>,
}

/// Learning rate of training on the device (without --scenario).
pub const TRAIN_LR: f32 = 1e-3;

/// Samples a centre remembers with online k-means (`--memory`) when no centre can spawn.
pub const CENTRE_MEMORY: u16 = 100;

/// Samples a centre remembers when centres can spawn (`--spawn-above` below 2, and
/// `new-clusters`): ten times [`CENTRE_MEMORY`], as a centre must move slower than
/// novelty takes to persist. A new class's samples below the novelty threshold are
/// labelled with known centres and pull them; with a memory of 100 a centre goes most of
/// the way to them within one spawn window, so the new class stops looking novel before
/// the rule fires, and on a stream of known classes the centres wander from the trained
/// ones until their novelty climbs above the threshold (docs/device.md#scenarios).
pub const SPAWN_MEMORY: u16 = 1000;

/// Tolerance of the acceptance test.
pub const ACC_TOLERANCE: f64 = 0.03;

/// The firmware's compiled-in model.
pub fn default_model() -> PathBuf {
    device::firmware::default_dir().join("model/digits.hvae")
}

/// The schedule: which rows go in which request.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Settings sent with the first request.
    pub settings: TrainSettings,
    /// Steps in all.
    pub steps: u32,
    /// Samples and steps per request.
    pub per_request: u16,
    /// Seed of the streaming order.
    pub seed: u64,
}

impl Schedule {
    /// The requests: each with `per_request` rows of a seeded permutation (cycled) and
    /// as many steps; the first with the settings.
    pub fn requests(&self, data: &Dataset) -> Result<Vec<Request>, Error> {
        let order = permutation(data.len(), self.seed);
        let rows = (0..).map(|i| data.row(order[i % order.len()]).to_vec());
        self.requests_of(data.dim(), rows)
    }

    /// The requests streaming `rows` (`d` values each) in their order, `per_request` rows
    /// and as many steps each, `steps` steps in all; the first with the settings.
    pub fn requests_of(
        &self,
        d: usize,
        mut rows: impl Iterator<Item = Vec<f32>>,
    ) -> Result<Vec<Request>, Error> {
        let per = usize::from(self.per_request);
        if per * d > MAX_SAMPLE {
            return Err(Error::BadInput(format!(
                "--per-request {per} rows of {d} values exceed the protocol's {MAX_SAMPLE} values \
                 per request"
            )));
        }
        let n_req = (self.steps as usize).div_ceil(per);
        let mut out = Vec::with_capacity(n_req);
        let mut left = self.steps as usize;
        for r in 0..n_req {
            let mut samples = heapless::Vec::<f32, MAX_SAMPLE>::new();
            for _ in 0..per {
                let row = rows
                    .next()
                    .ok_or_else(|| Error::Failed("the stream ended early".to_string()))?;
                samples
                    .extend_from_slice(&row)
                    .map_err(|_| Error::Failed("training batch overflow".to_string()))?;
            }
            let steps = left.min(per);
            left -= steps;
            out.push(Request::TrainBatch {
                samples,
                steps: steps as u16,
                settings: (r == 0).then_some(self.settings),
            });
        }
        Ok(out)
    }
}

/// A seeded permutation of `0..n` (Fisher-Yates on xoshiro256++).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for i in (1..order.len()).rev() {
        let j = ((rng.next_u32() as u64 * (i as u64 + 1)) >> 32) as usize;
        order.swap(i, j);
    }
    order
}

/// The scope's name in reports.
pub fn scope_name(s: TrainScope) -> &'static str {
    match s {
        TrainScope::Full => "full",
        TrainScope::EncoderAndSegmenter => "encoder-and-segmenter",
        TrainScope::SegmenterOnly => "segmenter-only",
        TrainScope::SegmenterAndNormalisation => "segmenter-and-normalisation",
    }
}

/// ACC and NMI of `model`'s architecture with `params` on `data`.
pub fn quality(params: Vec<f32>, model: &LoadedModel, data: &Dataset) -> Result<Quality, Error> {
    let m = Model::new(*model.model.shape(), params)
        .map_err(|e| Error::Failed(format!("the trained weights are not a model: {e}")))?;
    let seg = super::eval::segment_all(&m, data)?;
    let truth = data
        .labels()
        .ok_or_else(|| Error::BadInput("the data has no label column".to_string()))?;
    let s = metrics::scores(truth, &seg.labels);
    Ok(Quality {
        acc: s.acc,
        nmi: s.nmi,
    })
}

fn dev_err(name: &str, e: DeviceError) -> Error {
    Error::Failed(format!("{name}: {e}"))
}

/// Trains one scope on the device and on the host.
pub fn run_scope(
    dev: &mut Device,
    model: &LoadedModel,
    data: &Dataset,
    schedule: &Schedule,
) -> Result<(ScopeReport, Vec<f32>), Error> {
    let requests = schedule.requests(data)?;
    Reference::Learn.run(dev, model, data, schedule.settings.scope, &requests)
}

/// Which engine of the host is the reference of a device run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// The `learn` program's (the `adapt` program's for a device that holds the
    /// inference parameters alone).
    Learn,
    /// The scratch engine (a memory of bytes).
    Scratch,
}

impl Reference {
    /// Loads `model` on the device, sends it `requests` (training of `scope`), reads the
    /// weights back and does the same on this engine of the host; scores both on `data`.
    pub fn run(
        self,
        dev: &mut Device,
        model: &LoadedModel,
        data: &Dataset,
        scope: TrainScope,
        requests: &[Request],
    ) -> Result<(ScopeReport, Vec<f32>), Error> {
        let name = dev.name().to_string();
        let shape = *model.model.shape();
        // The device.
        let t0 = Instant::now();
        let info = dev.sync().map_err(|e| dev_err(&name, e))?;
        if info.capabilities & CAP_TRAIN == 0 {
            return Err(Error::Failed(format!(
                "{name}: the device program does not train (run the firmware's `learn` or `adapt`)"
            )));
        }
        // A device holds every parameter, or (the `adapt` program) the inference ones.
        let n = info.params_held as usize;
        if info.shape != ShapeInfo::from(&shape)
            || (n != shape.param_len() && n != shape.inference_param_len())
        {
            return Err(Error::BadInput(format!(
                "{name} runs another architecture than the model, or holds {n} of its {} \
                 parameters",
                shape.param_len()
            )));
        }
        // A device that cannot load weights (`adapt`) must already run the model's.
        if info.capabilities & CAP_LOAD != 0 {
            let blob = model_io::to_bytes(&model.model)
                .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?;
            dev.load_weights(&blob).map_err(|e| dev_err(&name, e))?;
        } else if info.weights_crc != model.crc {
            return Err(Error::BadInput(format!(
                "{name} runs weights of CRC {:#010x}, not the model's ({:#010x}), and cannot load \
                 weights: build the firmware with the model",
                info.weights_crc, model.crc
            )));
        }
        let mut answers = Vec::with_capacity(requests.len());
        for (i, req) in requests.iter().enumerate() {
            let r = dev
                .request_all(req, dev.timeouts.train)
                .map_err(|e| Error::Failed(format!("{name}: training request {}: {e}", i + 1)))?;
            answers.push(r);
        }
        let dev_params = dev.read_weights(n).map_err(|e| dev_err(&name, e))?;
        let device_seconds = t0.elapsed().as_secs_f64();
        // The host, same engine, same requests.
        let t1 = Instant::now();
        let mut host = match self {
            Reference::Learn if n < shape.param_len() => {
                adapt_learner(model.model.clone(), model.crc)
                    .map(|e| HostEngine::Adapt(Box::new(e)))
            }
            Reference::Learn => {
                host_learner(model.model.clone(), model.crc).map(|e| HostEngine::Learn(Box::new(e)))
            }
            Reference::Scratch => scratch_learner(model.model.clone(), model.crc)
                .map(|e| HostEngine::Scratch(Box::new(e))),
        }
        .map_err(Error::Failed)?;
        let mut first_divergent = None;
        let mut train_ram = None;
        for (i, (req, dev_answers)) in requests.iter().zip(&answers).enumerate() {
            let mut h = Vec::new();
            host.handle_each(req, &mut |r| h.push(r.clone()));
            train_ram = train_ram.max(host.train_ram());
            let same = h.len() == dev_answers.len()
                && h.iter().zip(dev_answers).all(|(a, b)| same_answer(a, b));
            if first_divergent.is_none() && !same {
                first_divergent = Some(i);
            }
        }
        let count = |f: fn(&Response) -> bool| answers.iter().flatten().filter(|r| f(r)).count();
        let spawn_events = count(|r| {
            matches!(
                r,
                Response::Centre {
                    change: CentreChange::Spawned,
                    ..
                }
            )
        });
        let retire_events = count(|r| {
            matches!(
                r,
                Response::Centre {
                    change: CentreChange::Starved | CentreChange::MergedInto(_),
                    ..
                }
            )
        });
        let host_params = host.params().to_vec();
        let host_seconds = t1.elapsed().as_secs_f64();
        let (steps, final_loss) = match answers.last().and_then(|a| a.last()) {
            Some(Response::Trained { steps, loss, .. }) => (*steps, *loss),
            _ => (0, f32::NAN),
        };
        let mut differing = 0;
        let mut max_diff = 0f64;
        for (a, b) in dev_params.iter().zip(&host_params) {
            if a.to_bits() != b.to_bits() {
                differing += 1;
                max_diff = max_diff.max((f64::from(*a) - f64::from(*b)).abs());
            }
        }
        let device_q = quality(dev_params.clone(), model, data)?;
        let host_q = quality(host_params, model, data)?;
        Ok((
            ScopeReport {
                scope: scope_name(scope).to_string(),
                steps,
                device: device_q,
                host: host_q,
                acc_diff: (device_q.acc - host_q.acc).abs(),
                bit_identical: differing == 0,
                params_differing: differing,
                max_abs_param_diff: max_diff,
                first_divergent_request: first_divergent,
                spawn_events,
                retire_events,
                final_loss,
                device_seconds,
                host_seconds,
                train_ram,
            },
            dev_params,
        ))
    }
}

/// Answers equal, with losses compared by their bits (NaN included).
fn same_answer(a: &Response, b: &Response) -> bool {
    match (a, b) {
        (
            Response::Trained {
                buffered: b1,
                steps: s1,
                loss: l1,
            },
            Response::Trained {
                buffered: b2,
                steps: s2,
                loss: l2,
            },
        ) => b1 == b2 && s1 == s2 && l1.to_bits() == l2.to_bits(),
        _ => a == b,
    }
}

/// Runs every scope of `args` on an open device.
pub fn train_on(
    dev: &mut Device,
    model: &LoadedModel,
    data: &Dataset,
    args: &DeviceTrainArgs,
) -> Result<DeviceTrainReport, Error> {
    let scopes: &[TrainScope] = match args.scope {
        ScopeArg::Full => &[TrainScope::Full],
        ScopeArg::EncoderAndSegmenter => &[TrainScope::EncoderAndSegmenter],
        ScopeArg::SegmenterOnly => &[TrainScope::SegmenterOnly],
        ScopeArg::SegmenterAndNormalisation => &[TrainScope::SegmenterAndNormalisation],
        ScopeArg::All => &[
            TrainScope::Full,
            TrainScope::EncoderAndSegmenter,
            TrainScope::SegmenterOnly,
        ],
    };
    let optimiser = args.optimiser().to_wire(args);
    let mut reports = Vec::new();
    // Full starts from the initial model; the adaptation scopes (decoder frozen, or only
    // the centres) start from a trained network when there is one: the Full run's.
    let mut start = model.clone();
    for &scope in scopes {
        let settings = TrainSettings {
            scope,
            optimiser,
            lr: args.lr.unwrap_or(TRAIN_LR),
            batch: args.batch,
        };
        // The device's engine validates these too; checking here gives a clear message.
        let gradient = !matches!(optimiser, TrainOptimiser::OnlineKMeans { .. });
        if gradient && hvae::device::config(&settings).is_none() {
            return Err(Error::BadInput(format!(
                "training settings out of range: lr {} (> 0), batch {} (1..={}), momentum {} \
                 ([0, 1))",
                args.lr.unwrap_or(TRAIN_LR),
                args.batch,
                hvae::device::MAX_BATCH,
                args.momentum
            )));
        }
        let schedule = Schedule {
            settings,
            steps: args.steps,
            per_request: args.per_request,
            seed: args.seed,
        };
        let (report, params) = run_scope(dev, &start, data, &schedule)?;
        if let Some(dir) = &args.out_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Failed(format!("cannot create {}: {e}", dir.display())))?;
            let m = Model::new(*model.model.shape(), params.clone())
                .map_err(|e| Error::Failed(format!("the trained weights are not a model: {e}")))?;
            let path = dir.join(format!("device-{}.hvae", report.scope));
            model_io::save(&path, &m).map_err(|e| Error::Failed(e.to_string()))?;
        }
        if scope == TrainScope::Full {
            let m = Model::new(*model.model.shape(), params)
                .map_err(|e| Error::Failed(format!("the trained weights are not a model: {e}")))?;
            let bytes = model_io::to_bytes(&m)
                .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?;
            start = model_io::from_bytes(&bytes)
                .map_err(|e| Error::Failed(format!("cannot re-read the model: {e}")))?;
        }
        reports.push(report);
    }
    let pass = reports
        .iter()
        .filter(|r| r.scope == "full")
        .all(|r| r.acc_diff <= ACC_TOLERANCE);
    Ok(DeviceTrainReport {
        pass,
        device: dev.name().to_string(),
        acc_tolerance: ACC_TOLERANCE,
        scopes: reports,
    })
}

/// Prints a report.
pub fn print_report(r: &DeviceTrainReport, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    if json {
        let text = serde_json::to_string(r)
            .map_err(|e| Error::Failed(format!("cannot encode the report: {e}")))?;
        return outln!(out, "{text}");
    }
    outln!(out, "device {}", r.device)?;
    outln!(
        out,
        "{:<22} {:>6} {:>12} {:>12} {:>8} {:>14} {:>9} {:>9}",
        "scope",
        "steps",
        "device ACC",
        "host ACC",
        "|dACC|",
        "bit-identical",
        "device s",
        "host s"
    )?;
    for s in &r.scopes {
        outln!(
            out,
            "{:<22} {:>6} {:>6.4}/{:.3} {:>6.4}/{:.3} {:>8.4} {:>14} {:>9.1} {:>9.1}",
            s.scope,
            s.steps,
            s.device.acc,
            s.device.nmi,
            s.host.acc,
            s.host.nmi,
            s.acc_diff,
            if s.bit_identical {
                "yes".to_string()
            } else {
                format!("no ({})", s.params_differing)
            },
            s.device_seconds,
            s.host_seconds
        )?;
    }
    outln!(
        out,
        "(ACC/NMI on the whole data set; pass: full-scope |dACC| <= {})",
        r.acc_tolerance
    )?;
    outln!(out, "{}", if r.pass { "PASS" } else { "FAIL" })
}

/// A fresh initialisation (the core's, seeded) of `like`'s architecture.
pub fn fresh(like: &LoadedModel, seed: u64) -> Result<LoadedModel, Error> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let m = Model::<f32, Vec<f32>>::with_shape(*like.model.shape(), &mut rng)
        .map_err(|e| Error::Failed(format!("cannot initialise a model: {e}")))?;
    let bytes = model_io::to_bytes(&m)
        .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?;
    model_io::from_bytes(&bytes)
        .map_err(|e| Error::Failed(format!("cannot re-read the model: {e}")))
}

/// `model` with its input normalisation fitted to `data` ([`crate::train::fit_normalisation`]).
pub fn with_fitted_normalisation(
    model: &LoadedModel,
    data: &Dataset,
) -> Result<LoadedModel, Error> {
    let (offset, scale) = crate::train::fit_normalisation(data.features(), data.dim())
        .map_err(|e| Error::BadInput(format!("cannot fit a normalisation: {e}")))?;
    let mut m = model.model.clone();
    m.set_normalisation(&offset, &scale)
        .map_err(|e| Error::Failed(format!("cannot set the normalisation: {e}")))?;
    let bytes = model_io::to_bytes(&m)
        .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?;
    model_io::from_bytes(&bytes)
        .map_err(|e| Error::Failed(format!("cannot re-read the model: {e}")))
}

/// The firmware programs that learn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgramArg {
    /// Every scope and optimiser (the whole model in RAM, a trainer's buffers).
    Learn,
    /// Online k-means of the centres only (the inference weights, no buffers).
    Adapt,
}

/// Runs `hvae device-train`.
pub fn run(args: &DeviceTrainArgs, out: &mut dyn Write) -> Result<(), Error> {
    if let Some(s) = args.scenario {
        return run_scenario(s, args, out);
    }
    let model_path = args.model.clone().unwrap_or_else(default_model);
    let data_path = args
        .data
        .clone()
        .unwrap_or_else(super::demo::bundled_digits);
    let mut model = model_io::load(&model_path)?;
    if args.model.is_none() {
        model = fresh(&model, args.init_seed)?;
    }
    let data = data::load(&data_path)?;
    super::eval::check_sizes(&model.model, &model_path, &data, &data_path)?;
    if !args.keep_normalisation {
        model = with_fitted_normalisation(&model, &data)?;
    }
    labelled(&data, &data_path, "trained")?;
    // Fail on a model the host reference cannot run before starting the device.
    host_learner(model.model.clone(), model.crc).map_err(Error::BadInput)?;
    let mut opened = open_learn(args)?;
    let report = train_on(&mut opened.device, &model, &data, args)?;
    print_report(&report, args.json, out)?;
    if report.pass {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "device training failed: full-scope ACC differs from the host's by more than {}",
            ACC_TOLERANCE
        )))
    }
}

/// `BadInput` unless `data` (read from `path`) has labels: the `what` (trained,
/// adapted) models are scored against them.
fn labelled(data: &data::Dataset, path: &Path, what: &str) -> Result<(), Error> {
    if data.labels().is_none() {
        return Err(Error::BadInput(format!(
            "{} has no '{}' column: the {what} models cannot be scored",
            path.display(),
            data::LABEL_COLUMN
        )));
    }
    Ok(())
}

/// The learning program of `args` (`--program`, or the device's default).
fn learn_bin(args: &DeviceTrainArgs) -> &'static str {
    match args.program {
        Some(ProgramArg::Learn) => device::LEARN_BIN,
        Some(ProgramArg::Adapt) => device::ADAPT_BIN,
        None => device::learn_program(&args.device),
    }
}

fn open_learn(args: &DeviceTrainArgs) -> Result<device::Opened, Error> {
    let bin = learn_bin(args);
    if bin == device::ADAPT_BIN && !matches!(args.optimiser(), OptimiserArg::OnlineKMeans) {
        return Err(Error::BadInput(
            "the `adapt` program adapts by online k-means alone: --optimiser online-k-means"
                .to_string(),
        ));
    }
    open_program(args, bin)
}

fn open_program(args: &DeviceTrainArgs, bin: &str) -> Result<device::Opened, Error> {
    let waits = Timeouts {
        train: Duration::from_secs(120),
        ..Timeouts::default()
    };
    args.connection.open(&args.device, bin, waits)
}

/// Runs `hvae device-train --scenario`.
fn run_scenario(s: ScenarioArg, args: &DeviceTrainArgs, out: &mut dyn Write) -> Result<(), Error> {
    let model_path = args
        .model
        .clone()
        .unwrap_or_else(|| device::firmware::default_dir().join(device::model_of(learn_bin(args))));
    let data_path = args
        .data
        .clone()
        .unwrap_or_else(super::demo::bundled_digits);
    let model = model_io::load(&model_path)?;
    let data = data::load(&data_path)?;
    super::eval::check_sizes(&model.model, &model_path, &data, &data_path)?;
    labelled(&data, &data_path, "adapted")?;
    host_learner(model.model.clone(), model.crc).map_err(Error::BadInput)?;
    let mut opened = if matches!(s, ScenarioArg::Scratch | ScenarioArg::NewClusters) {
        open_program(args, crate::device::SCRATCH_BIN)?
    } else {
        open_learn(args)?
    };
    // The report as one JSON object or as its table.
    fn report<R: Serialize>(
        r: &R,
        json: bool,
        table: impl FnOnce(&R, &mut dyn Write) -> Result<(), Error>,
    ) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::new();
        if json {
            let j = serde_json::json!({ "scenarios": [r] });
            outln!(&mut buf, "{j}")?;
        } else {
            table(r, &mut buf)?;
        }
        Ok(buf)
    }
    let (pass, text) = match s {
        ScenarioArg::Scratch => {
            let r = scenario::scratch(&mut opened.device, &model, &data, args)?;
            (r.pass, report(&r, args.json, scenario::print_scratch)?)
        }
        ScenarioArg::Drift => {
            let mut reopen = || open_learn(args);
            let r = scenario::drift(&mut opened, &mut reopen, &model, &data, args)?;
            (r.pass, report(&r, args.json, scenario::print_drift)?)
        }
        ScenarioArg::NewClusters => {
            let r = scenario::new_clusters(&mut opened.device, &model, &data, args)?;
            (r.pass, report(&r, args.json, scenario::print_new_clusters)?)
        }
    };
    out.write_all(&text)
        .map_err(|e| Error::Failed(format!("cannot write the report: {e}")))?;
    if pass {
        Ok(())
    } else {
        Err(Error::Failed(
            "the scenario missed a bar (see the table)".to_string(),
        ))
    }
}
