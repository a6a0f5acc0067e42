//! The device side of the protocol ([`crate::protocol`]): one engine that serves
//! requests, learns from streamed samples and keeps checkpoints, and one server that runs
//! it over a byte stream. Enabled by the `device` feature (which implies `protocol`);
//! `no_std`, no allocation, free of board code.
//!
//! | item | job |
//! |---|---|
//! | [`Engine`] | the request dispatch (info, answers, weight loading, read back, checkpoints, training), the capabilities chosen by a const ([`LEARN`], [`INFER`]) |
//! | [`Store`] | where the engine's big buffers live and where checkpoints go ([`crate::store::checkpoint`] over `embedded-storage` NOR flash); [`SlotsOnly`] for an engine without buffers, `HeapStore` (feature `alloc`) for host tests and simulated devices |
//! | [`Served`], [`Int8`] | the model the engine serves: the `f32` [`Model`](crate::Model), or the int8 [`QuantModel`](crate::QuantModel) ([`Int8Weights`]); what differs between them (answers, the blob a load takes) |
//! | [`Params`], [`Slots`] | where the weights live: in RAM (trained in place, loads staged and copied), or in flash slots a load fills as it arrives |
//! | [`Learns`], [`Learning`] | the training state an engine keeps: all of it, or `()` in an engine that only answers |
//! | [`Transport`], [`Engine::serve`] | the server: frames from a byte stream, answers back |
//!
//! The firmware's programs are thin binaries over the engine: `cluster` with the
//! [`INFER`] capabilities, the weights in flash and no training state; `cluster_int8`
//! the same over the int8 model in flash ([`Int8`], [`INFER_INT8`]), and
//! `cluster_int8_fixed` over the compiled-in int8 model (answers only); `learn` and
//! `learn_scratch` over static buffers; `adapt` with the [`ADAPT`] capabilities. The host
//! tool runs the same engine over heap buffers and in-memory pipes, as the reference of
//! `hvae device-train` and as the simulated device of its tests (which wraps the
//! transport with injected faults). Same code, same seed, same core: host and device
//! compute the same bits.
//!
//! # Training
//! The first `TrainBatch` carries [`TrainSettings`] (scope, optimiser, learning rate,
//! anchors per step); settings start a new [`OnlineTrainer`] (an empty ring buffer of
//! [`CAP`] samples, zeroed optimiser state, the generator re-seeded with [`SEED`]). Each
//! `TrainBatch` pushes its samples, then takes its steps. The schedule is the core's
//! ([`TrainConfig::new`], through [`config`]). Full scope trains from scratch:
//! [`WARMUP_STEPS`] steps of the VAE alone, then the centres by spherical k-means++ on
//! the buffer, then joint training. EncoderAndSegmenter and SegmenterOnly adapt a trained
//! model: joint training from the first step, with the model's centres.
//! SegmenterAndNormalisation trains as SegmenterOnly and, for a sensor whose gain or
//! offset drifts, lets the input normalisation follow the stream: every sample updates a
//! [`Tracker`](crate::infer::normalise::Tracker) started from the model's normalisation
//! (forgetting by [`NORM_DECAY`] per sample), whose normalisation replaces the model's
//! after each request's samples are buffered. The divergence
//! guard is on. A step refused for lack of samples is not an error (the answer says how
//! many steps were taken in all); a step the guard rejects is skipped; any other failed
//! step ends the request with [`ErrorCode::Train`] (the steps before it stay applied).
//!
//! # Checkpoints
//! With checkpoint slots ([`Store::checkpoints`], [`crate::store::checkpoint`]: two slots,
//! sequence number, CRC, commit word), the engine saves every [`CHECKPOINT_EVERY`] steps
//! and on `Checkpoint` what its training needs to go on: the weights, the optimiser
//! state, the step counts, the trainer's resume record (memory of past samples,
//! marginal, guard) and its own settings and generator seed ([`RESUME_PREFIX`]); for
//! online k-means the weights, the settings, the centres' counts, the spawner's memory
//! of novelty and the normalisation tracker ([`crate::store::record`]); the weights
//! alone when no training is under way. An engine whose model holds its inference
//! parameters alone ([`ADAPT`], no decoder) saves, instead of the weights, what online
//! k-means changes: the normalisation and the segmenter
//! ([`Layout::adapted`](crate::store::checkpoint::Layout::adapted), named by the CRC of
//! the blob the engine was built with or last loaded, so that a checkpoint adapted on
//! other weights is never restored; slots of [`adapt_slot_len`]), with the same state.
//! When the divergence guard has rejected
//! too many steps in a row, it restores the last checkpoint (the memory too, so the
//! samples that diverged are gone). At boot, [`Engine::restore`] resumes the training
//! of the newest checkpoint where it stopped, or puts its weights back. After a
//! `Checkpoint` request the next `TrainBatch` without settings takes the very steps it
//! would have taken without the reset (the request forks the generator: it draws the
//! seed it stores and goes on from it); a periodic save leaves the generator alone (a
//! run's bits do not depend on it), and a run resumed from it draws a stream of its
//! own. A checkpoint of one (scope, optimiser) does not
//! count as valid for another, so the first save after a change of scope may overwrite
//! the newest checkpoint of the old scope. An engine that does not train ([`INFER`])
//! saves loaded weights at once: straight into the slot not in use when its weights
//! live in flash ([`Slots`]; `Checkpoint` then has nothing more to save), else as a
//! checkpoint after the last chunk; one that trains keeps them in RAM until
//! `Checkpoint`.
//!
//! # Memory
//! Buffers come from a [`Store`]: one scratch buffer of [`scratch_len`] and one
//! optimiser buffer of [`optim_len`] scalars (sized for the largest scope, Full with
//! Adam); a weight load stages the incoming blob's parameters in the scratch buffer
//! (weights in RAM) or writes them into the flash slot not in use (weights in flash,
//! [`Slots`]), so a failed load leaves the weights untouched without a second copy of
//! them in RAM. An engine that trains nothing (`L = ()`, as `cluster`) over weights in
//! flash takes no buffer at all. The
//! trainer's memory of past samples lives in the engine itself: by default a ring of
//! [`CAP`] `f32` samples; an engine built with a larger memory (`Engine`'s `MEM` and `E`,
//! e.g. 240 samples as bytes for learning from scratch) takes [`scratch_len_with`]
//! scalars of scratch, and [`Engine::train_ram`] reports the bytes a training holds.
//!
//! [`TrainSettings`]: crate::protocol::TrainSettings
//! [`OnlineTrainer`]: crate::train::trainer::OnlineTrainer
//! [`TrainConfig::new`]: crate::train::trainer::TrainConfig::new
//! [`ErrorCode::Train`]: crate::protocol::ErrorCode::Train

/// An `impl` block of [`Engine`] with its generic parameters and their bounds, written
/// once for the files that implement its parts (engine, training, persist, server).
macro_rules! engine_impl {
    ($($item:item)*) => {
        impl<const D: usize, const W: usize, M, S, const CAPS: u32, const MEM: usize, E, L>
            $crate::device::Engine<D, W, M, S, CAPS, MEM, E, L>
        where
            M: $crate::device::Served,
            S: $crate::device::Store,
            E: $crate::train::samples::Stored<f32>,
            L: $crate::device::Learns<D, MEM, <S as $crate::device::Store>::Buf, E>,
        {
            $($item)*
        }
    };
}

mod engine;
mod learning;
mod params;
mod persist;
mod served;
mod server;
mod stores;
mod training;

pub use engine::{blob_crc, Engine};
pub use learning::{Learning, Learns};
pub use params::{Params, Slots};
pub use served::{int8_words, Int8, Int8Weights, Served};
pub use server::{send, Transport, INTERNAL_ERROR_FRAME};
#[cfg(feature = "alloc")]
pub use stores::{blank_slots, HeapStore};
pub use stores::{Measures, SlotsOnly, Unmeasured};
pub use training::{config, config_with_memory, quant_of};

use crate::protocol::{CAP_CHECKPOINT, CAP_ENCODE, CAP_LOAD, CAP_READ, CAP_SEGMENT, CAP_TRAIN};
use crate::shape::{Scope, Shape};
use crate::store::checkpoint::Checkpoints;
use crate::train::optim::OptimKind;
use crate::train::samples::Policy;
use crate::train::trainer::TrainConfig;
use embedded_storage::nor_flash::NorFlash;

/// Capabilities of a learning device: every request.
pub const LEARN: u32 = CAP_SEGMENT | CAP_ENCODE | CAP_LOAD | CAP_READ | CAP_CHECKPOINT | CAP_TRAIN;
/// Capabilities of an inference device: every request but `TrainBatch`.
pub const INFER: u32 = CAP_SEGMENT | CAP_ENCODE | CAP_LOAD | CAP_READ | CAP_CHECKPOINT;
/// Capabilities of an inference device that serves the int8 model ([`Int8`]): answers,
/// and `LoadWeights` of an int8 blob into its flash slots (no `f32` values to read back;
/// a load is in flash once committed, so `Checkpoint` has nothing to save).
pub const INFER_INT8: u32 = CAP_SEGMENT | CAP_ENCODE | CAP_LOAD;

/// Capabilities of an adapting device that holds no trainer (the firmware's `adapt`):
/// answers, reading the weights back, `TrainBatch` with online k-means of the centres (a
/// gradient optimiser needs buffers such a device does not have) and `Checkpoint` (what
/// it adapted, [`adapt_slot_len`]). No `LoadWeights`: staging a load beside the weights
/// in use takes a second parameter vector of RAM.
pub const ADAPT: u32 = CAP_SEGMENT | CAP_ENCODE | CAP_READ | CAP_TRAIN | CAP_CHECKPOINT;
/// Samples the trainer of an [`ADAPT`] engine remembers (`Engine`'s `MEM`): the least a
/// trainer takes; online k-means keeps no memory of past samples.
pub const ADAPT_MEM: usize = 2;

/// Seed of the training generator, re-applied by every new training settings.
pub const SEED: u64 = 0x006c_6561_726e; // "learn"
/// Forgetting factor per sample of the input normalisation tracked by the
/// `SegmenterAndNormalisation` scope ([`Tracker`](crate::infer::normalise::Tracker)):
/// its statistics weigh about the last `1 / (1 - NORM_DECAY)` samples.
pub const NORM_DECAY: f32 = 0.995;
/// How online k-means retires and merges centres ([`TidyRule`](crate::train::centres::TidyRule)):
/// the centre a sample moved merges with another in use when their cosine reaches
/// 0.98 (two centres that close label the same cluster), and a centre in use that no
/// sample was labelled with in the last 20,000 samples retires (its slot is free for a
/// spawn).
pub const TIDY: crate::train::centres::TidyRule = crate::train::centres::TidyRule {
    merge_above: 0.98,
    starve_after: 20_000,
};
/// Samples in the training ring buffer.
pub const CAP: usize = 32;
/// Partners of the consistency loss are drawn among this many nearest neighbours in a
/// memory larger than [`CAP`] (learning from scratch): 5, or the integer (1 to
/// `MAX_NEIGHBOURS`) in the environment variable `HVAE_SCRATCH_NEIGHBOURS` at build time.
/// The host draws from the 10 nearest of the whole set.
pub const SCRATCH_NEIGHBOURS: usize = build_setting(option_env!("HVAE_SCRATCH_NEIGHBOURS"), 5);
const _: () =
    assert!(SCRATCH_NEIGHBOURS >= 1 && SCRATCH_NEIGHBOURS <= crate::train::trainer::MAX_NEIGHBOURS);
/// Warm-up steps of Full training with a memory larger than [`CAP`] (learning from
/// scratch): 3000, or the integer in the environment variable `HVAE_SCRATCH_WARMUP` at
/// build time.
pub const SCRATCH_WARMUP_STEPS: u32 =
    build_setting(option_env!("HVAE_SCRATCH_WARMUP"), 3000) as u32;
/// Samples the centre initialisation encodes with a memory larger than [`CAP`] (a
/// uniform sample of the stream; its directions take `SCRATCH_INIT_SAMPLES * M`
/// scalars of scratch, in the layer-wise update's block buffer when they fit there).
/// 64, or the integer in the environment variable `HVAE_SCRATCH_INIT` at build time.
pub const SCRATCH_INIT_SAMPLES: usize = build_setting(option_env!("HVAE_SCRATCH_INIT"), 64);
const _: () = assert!(CAP <= SCRATCH_INIT_SAMPLES);
/// Samples a learning-from-scratch engine remembers (kept by [`SCRATCH_POLICY`]), each
/// value stored as a byte (`Engine<.., SCRATCH_MEM, u8>`; `SCRATCH_MEM * D` bytes).
/// 240, or the integer (at least [`SCRATCH_INIT_SAMPLES`]) in the environment variable
/// `HVAE_SCRATCH_MEM` at build time (to measure other choices; docs/device.md#scenarios).
pub const SCRATCH_MEM: usize = build_setting(option_env!("HVAE_SCRATCH_MEM"), 240);
const _: () = assert!(SCRATCH_MEM >= SCRATCH_INIT_SAMPLES);
/// Hidden units of the network a device learns from scratch (one layer): with
/// [`SCRATCH_OPTIM`], the layer-wise update and a [`SCRATCH_MEM`] memory, what fits 48 KiB
/// of training state (docs/device.md#scenarios). 32, or the positive integer in the
/// environment variable `HVAE_SCRATCH_HIDDEN` at build time.
pub const SCRATCH_HIDDEN: usize = build_setting(option_env!("HVAE_SCRATCH_HIDDEN"), 32);
const _: () = assert!(SCRATCH_HIDDEN > 0);
/// Clipping norm of each block's gradient in learning from scratch (the layer-wise
/// update clips each block by its own norm; a global norm needs the whole gradient
/// before any update): 5, or the integer in the environment variable
/// `HVAE_SCRATCH_CLIP` at build time (0: no clipping).
pub const SCRATCH_CLIP: usize = build_setting(option_env!("HVAE_SCRATCH_CLIP"), 5);

/// Weight of the cluster loss (`gamma`) in learning from scratch: 6 (the host trainer's;
/// with the balance term on each step's batch, [`SCRATCH_RHO_TENTHS`]), or the integer
/// in the environment variable `HVAE_SCRATCH_GAMMA` at build time.
pub const SCRATCH_GAMMA: usize = build_setting(option_env!("HVAE_SCRATCH_GAMMA"), 6);

/// The optimiser a device learning from scratch sizes its state for
/// ([`scratch_optim_len`]) and trains with by default ([`SCRATCH_OPTIMISER`]): the
/// factored second moment without a first moment ([`OptimKind::FactoredRms`]: a few
/// hundred values where Adam keeps two per parameter, which buys the wider network and
/// the larger memory), or the optimiser named in the environment variable
/// `HVAE_SCRATCH_OPTIM` at build time (`adam`, `factored`, `factored-rms`, `sgd`).
pub const SCRATCH_OPTIM: OptimKind = build_choice(
    option_env!("HVAE_SCRATCH_OPTIM"),
    OptimKind::FactoredRms,
    &[
        ("adam", OptimKind::Adam),
        ("factored", OptimKind::Factored),
        ("factored-rms", OptimKind::FactoredRms),
        ("sgd", OptimKind::Sgd),
    ],
    "HVAE_SCRATCH_OPTIM must be adam, factored, factored-rms or sgd",
);

/// Which samples a device learning from scratch remembers: a sliding random sample of
/// the stream ([`Policy::Sliding`]: each new sample replaces a random one, so the memory
/// turns over as the passes go and every sample is trained on in its turn; a reservoir
/// keeps the first passes' few hundred samples for good and the model learns them by
/// heart), or the policy named in the environment variable `HVAE_SCRATCH_POLICY` at
/// build time (`sliding`, `reservoir`).
pub const SCRATCH_POLICY: Policy = build_choice(
    option_env!("HVAE_SCRATCH_POLICY"),
    Policy::Sliding,
    &[
        ("sliding", Policy::Sliding),
        ("reservoir", Policy::Reservoir),
    ],
    "HVAE_SCRATCH_POLICY must be sliding or reservoir",
);

/// Momentum of the running cluster marginal the balance term of a device learning from
/// scratch pulls towards the uniform (`LossConfig::balance_momentum`), in tenths: 0,
/// each step's own batch (as the host trainer; with 0.9 the marginal moves slowly and
/// clusters merge more often), or the integer (0 to 9) in the environment variable
/// `HVAE_SCRATCH_RHO` at build time.
pub const SCRATCH_RHO_TENTHS: usize = build_setting(option_env!("HVAE_SCRATCH_RHO"), 0);
const _: () = assert!(SCRATCH_RHO_TENTHS < 10);

/// [`SCRATCH_OPTIM`] on the wire (SGD with momentum 0.9), with Adam's default betas.
pub const SCRATCH_OPTIMISER: crate::protocol::TrainOptimiser = match SCRATCH_OPTIM {
    OptimKind::Adam => crate::protocol::TrainOptimiser::Adam,
    OptimKind::Factored => crate::protocol::TrainOptimiser::Factored,
    OptimKind::FactoredRms => crate::protocol::TrainOptimiser::FactoredRms,
    OptimKind::Sgd => crate::protocol::TrainOptimiser::Sgd { momentum: 0.9 },
};

/// A setting of the build that names one of a few values: the value of the name in
/// `var` among `names`, or `default` without one; another name fails the build with
/// `unknown`.
const fn build_choice<T: Copy>(
    var: Option<&str>,
    default: T,
    names: &[(&str, T)],
    unknown: &str,
) -> T {
    let Some(s) = var else {
        return default;
    };
    let mut i = 0;
    while i < names.len() {
        if same(s, names[i].0) {
            return names[i].1;
        }
        i += 1;
    }
    panic!("{}", unknown)
}

/// `a == b`, in a constant.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A setting of the build: the decimal integer in `var`, or `default` without one.
const fn build_setting(var: Option<&str>, default: usize) -> usize {
    match var {
        None => default,
        Some(s) => match usize::from_str_radix(s, 10) {
            Ok(n) => n,
            Err(_) => panic!("an HVAE_SCRATCH_* setting must be a decimal integer"),
        },
    }
}

/// The latent dimension of the network a device learns from scratch: 0 (the deployed
/// model's), or the integer in the environment variable `HVAE_SCRATCH_LATENT` at build time.
pub const SCRATCH_LATENT: usize = build_setting(option_env!("HVAE_SCRATCH_LATENT"), 0);

/// The network a device learns from scratch: `like`'s inputs, latent, clusters,
/// activation, posterior and likelihood, with one hidden layer of [`SCRATCH_HIDDEN`].
pub const fn scratch_shape(like: &Shape) -> Shape {
    let latent = match SCRATCH_LATENT {
        0 => like.latent,
        m => m,
    };
    Shape::new(like.input, &[SCRATCH_HIDDEN], latent, like.clusters)
        .with_activation(like.activation)
        .with_posterior(like.posterior)
        .with_likelihood(like.likelihood)
}

/// Half-width, in standard deviations of each feature, of the span a memory of bytes
/// quantises ([`quant_of`]).
pub const QUANT_SD: f32 = 4.0;
/// Most anchors per step (`TrainSettings::batch`).
pub const MAX_BATCH: usize = 8;
/// Steps of the VAE alone before the centres are initialised (Full scope). Far longer
/// than the core's default 200: with 8 anchors per step, a short warm-up leaves k-means++
/// a barely trained encoder (docs/device.md#train-on-the-device).
pub const WARMUP_STEPS: u32 = 1000;
/// Steps between two periodic checkpoints (when the device has checkpoint slots): 500,
/// or the positive integer in the environment variable `HVAE_CHECKPOINT_EVERY` at build
/// time (flash wear against work lost on a reset is the firmware's choice).
pub const CHECKPOINT_EVERY: u32 = match option_env!("HVAE_CHECKPOINT_EVERY") {
    None => 500,
    Some(s) => match u32::from_str_radix(s, 10) {
        Ok(n) if n > 0 => n,
        _ => panic!("HVAE_CHECKPOINT_EVERY must be a positive integer"),
    },
};

const SCOPES: [Scope; 3] = [
    Scope::Full,
    Scope::EncoderAndSegmenter,
    Scope::SegmenterOnly,
];

/// Scalars of the scratch buffer: the trainer's storage for the largest scope, and at
/// least one parameter vector (the staging area of a load).
pub const fn scratch_len(shape: &Shape) -> usize {
    scratch_len_with(shape, CAP)
}

/// [`scratch_len`] for an engine whose trainer remembers `mem` samples.
pub const fn scratch_len_with(shape: &Shape, mem: usize) -> usize {
    let mut n = shape.param_len();
    // Samples the centre initialisation encodes (`engine::config_with_memory`).
    // A ring (at most `CAP <= SCRATCH_INIT_SAMPLES`) encodes all of its samples.
    let init = if mem > SCRATCH_INIT_SAMPLES {
        SCRATCH_INIT_SAMPLES
    } else {
        mem
    };
    let mut i = 0;
    while i < SCOPES.len() {
        // A memory larger than the ring's trains layer by layer (`config_with_memory`).
        let s = if mem > CAP && !matches!(SCOPES[i], Scope::SegmenterOnly) {
            TrainConfig::<f32>::storage_len_layerwise(shape, SCOPES[i], MAX_BATCH, init)
        } else {
            TrainConfig::<f32>::storage_len(shape, SCOPES[i], MAX_BATCH, init)
        };
        if s > n {
            n = s;
        }
        i += 1;
    }
    n
}

/// Scalars of the optimiser buffer: Adam's state over the Full scope (the largest).
pub const fn optim_len(shape: &Shape) -> usize {
    TrainConfig::<f32>::optim_len(shape, Scope::Full, OptimKind::Adam)
}

/// Scalars of the optimiser buffer of an engine that learns from scratch: the state of
/// [`SCRATCH_OPTIM`] over the Full scope (an optimiser whose state is larger is
/// refused; SGD, with one value per parameter, fits any).
pub const fn scratch_optim_len(shape: &Shape) -> usize {
    TrainConfig::<f32>::optim_len(shape, Scope::Full, SCRATCH_OPTIM)
}

/// Bytes the engine stores in a checkpoint of its trainer before the trainer's resume
/// record: its training settings and the seed its generator goes on from.
pub const RESUME_PREFIX: usize = 64;

/// Bytes of one checkpoint slot on flash `F` for an engine with the default memory
/// ([`CAP`] samples of `f32`): the largest layout (Full scope, Adam, the resume record).
pub const fn checkpoint_slot_len<F: NorFlash>(shape: &Shape) -> usize {
    checkpoint_slot_len_with::<F>(shape, CAP, 4)
}

/// [`checkpoint_slot_len`] for an engine whose trainer remembers `mem` samples of
/// `value_bytes` per value (`Engine`'s `MEM` and `E`: 1 for `u8`).
pub const fn checkpoint_slot_len_with<F: NorFlash>(
    shape: &Shape,
    mem: usize,
    value_bytes: usize,
) -> usize {
    slot_len_for::<F>(shape, mem, value_bytes, OptimKind::Adam)
}

/// Bytes of one checkpoint slot on flash `F` for the engine that learns from scratch
/// ([`SCRATCH_MEM`] byte samples): the Full scope with [`SCRATCH_OPTIM`],
/// the largest state its optimiser buffer ([`scratch_optim_len`]) admits.
pub const fn scratch_checkpoint_slot_len<F: NorFlash>(shape: &Shape) -> usize {
    slot_len_for::<F>(shape, SCRATCH_MEM, 1, SCRATCH_OPTIM)
}

/// A slot for the Full scope with `kind` and a memory of `mem` samples.
const fn slot_len_for<F: NorFlash>(
    shape: &Shape,
    mem: usize,
    value_bytes: usize,
    kind: OptimKind,
) -> usize {
    let record = crate::train::trainer::resume_len(shape, shape.input, mem, value_bytes, 4);
    crate::store::checkpoint::Layout::new::<f32>(*shape, Scope::Full, kind)
        .with_extra(RESUME_PREFIX + record)
        .slot_len(F::WRITE_SIZE, F::ERASE_SIZE)
}

/// Extra bytes of a checkpoint of online k-means in an engine of `D` inputs: the
/// settings prefix ([`RESUME_PREFIX`]), the centres' counts, the spawner's memory and the
/// normalisation tracker.
pub const fn kmeans_extra<const D: usize>() -> usize {
    use crate::store::record::Record;
    RESUME_PREFIX
        + crate::train::centres::CentreCounts::LEN
        + crate::train::centres::Spawner::LEN
        + crate::infer::normalise::Tracker::<D>::LEN
}

/// Bytes of one checkpoint slot on flash `F` for an engine of `D` inputs whose model
/// holds its inference parameters alone (the `adapt` program): what it adapts, its
/// normalisation and segmenter
/// ([`Layout::adapted`](crate::store::checkpoint::Layout::adapted)), with the state of
/// online k-means ([`kmeans_extra`]).
pub const fn adapt_slot_len<F: NorFlash, const D: usize>(shape: &Shape) -> usize {
    crate::store::checkpoint::Layout::adapted::<f32>(*shape, 0)
        .with_extra(kmeans_extra::<D>())
        .slot_len(F::WRITE_SIZE, F::ERASE_SIZE)
}

/// Memory figures a device reports in its `Info` answer (bytes; 0 when not measured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Program image in flash.
    pub flash: u32,
    /// Static RAM (`.data` + `.bss`).
    pub ram: u32,
    /// Peak stack so far.
    pub stack: u32,
}

/// Where the engine's big buffers live, and where checkpoints go.
pub trait Store {
    /// A buffer of scalars.
    type Buf: AsRef<[f32]> + AsMut<[f32]>;
    /// A zeroed scratch buffer of `scratch` scalars and a zeroed optimiser buffer of
    /// `optim` scalars. The engine calls this only after dropping every buffer of the
    /// previous call (so a device may hand out the same static memory again). `None`
    /// when the lengths exceed the memory.
    fn take(&mut self, scratch: usize, optim: usize) -> Option<(Self::Buf, Self::Buf)>;
    /// The flash the checkpoints live in.
    type Flash: NorFlash;
    /// The two checkpoint slots ([`crate::store::checkpoint`]), if the device has them; they
    /// must hold a checkpoint of the Full scope with Adam ([`checkpoint_slot_len`]).
    fn checkpoints(&mut self) -> Option<&mut Checkpoints<Self::Flash>>;
    /// The device's memory figures, read when `Info` is answered (a board measures its
    /// image, static RAM and peak stack; the default: none measured).
    fn resources(&mut self) -> Resources {
        Resources::default()
    }
}
