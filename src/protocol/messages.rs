//! The messages: requests, responses and what they carry, with their size limits.

use super::answer;
use super::frame::FrameError;
use crate::infer::model::{InferError, Segment};
use crate::infer::quant::QuantError;
use crate::shape::{Activation, Likelihood, Posterior, Scope, Shape, MAX_HIDDEN};
use crate::store::blob::{self, BlobError};
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Protocol version reported by [`Request::Info`]. Version 2: `Segment` and `Encode`
/// carry one or more samples and get one response per sample.
pub const VERSION: u16 = 2;

/// Most values in one sample ([`Request::Segment`], [`Request::Encode`]) or one
/// [`Request::TrainBatch`].
pub const MAX_SAMPLE: usize = 256;
/// Most blob bytes in one [`Request::LoadWeights`] chunk.
pub const MAX_CHUNK: usize = 256;
/// Most parameter values in one [`Response::Weights`].
pub const MAX_VALUES: usize = 64;
/// Most clusters (the core's limit).
pub const MAX_CLUSTERS: usize = 255;
/// Most latent dimensions (the core's limit).
pub const MAX_LATENT: usize = 64;

/// [`DeviceInfo::capabilities`] bit: serves [`Request::Segment`].
pub const CAP_SEGMENT: u32 = 1 << 0;
/// Serves [`Request::Encode`].
pub const CAP_ENCODE: u32 = 1 << 1;
/// Serves [`Request::LoadWeights`].
pub const CAP_LOAD: u32 = 1 << 2;
/// Serves [`Request::ReadWeights`].
pub const CAP_READ: u32 = 1 << 3;
/// Serves [`Request::Checkpoint`].
pub const CAP_CHECKPOINT: u32 = 1 << 4;
/// Serves [`Request::TrainBatch`].
pub const CAP_TRAIN: u32 = 1 << 5;

/// A message from the host to the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Versions, sizes, limits and the CRC of the weights in use.
    Info,
    /// A chunk of a weight blob ([`crate::store::blob`] format): `bytes` at byte `offset` of the
    /// blob. Chunks come in order from offset 0; `last` marks the final one.
    LoadWeights {
        /// Byte offset of this chunk in the blob.
        offset: u32,
        /// The chunk.
        bytes: Vec<u8, MAX_CHUNK>,
        /// This chunk ends the blob: check it and switch to the new weights.
        last: bool,
    },
    /// Encode `n >= 1` samples and apply the segmenter: one [`Response::Segmented`] (or
    /// [`Response::Error`]) per sample, in order.
    Segment {
        /// `n * D` raw values (before normalisation), one sample after the other.
        sample: Vec<f32, MAX_SAMPLE>,
    },
    /// Encode `n >= 1` samples: one [`Response::Encoded`] (or [`Response::Error`]) per
    /// sample, in order.
    Encode {
        /// `n * D` raw values, one sample after the other.
        sample: Vec<f32, MAX_SAMPLE>,
    },
    /// `count` values (at most [`MAX_VALUES`]) of the flat parameter vector from index
    /// `offset` (an inference-only device holds only the first
    /// `Shape::inference_param_len` values, see [`DeviceInfo::params_held`]).
    ReadWeights {
        /// First parameter index.
        offset: u32,
        /// Number of values.
        count: u16,
    },
    /// Make the current weights persistent (they survive a reset).
    Checkpoint,
    /// Push samples into the device's training buffer, then train.
    TrainBatch {
        /// `n * D` raw values, one sample after the other (may be empty).
        samples: Vec<f32, MAX_SAMPLE>,
        /// Optimiser steps to take after buffering the samples (0: only buffer them).
        steps: u16,
        /// New training settings; `None` keeps the current ones. A change of scope or
        /// optimiser resets the optimiser state.
        settings: Option<TrainSettings>,
    },
}

/// Training settings chosen by the host.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrainSettings {
    /// Which parameters are trained.
    pub scope: TrainScope,
    /// Which optimiser.
    pub optimiser: TrainOptimiser,
    /// Learning rate.
    pub lr: f32,
    /// Anchors per step.
    pub batch: u8,
}

/// [`Scope`] on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrainScope {
    /// [`Scope::Full`].
    Full,
    /// [`Scope::EncoderAndSegmenter`].
    EncoderAndSegmenter,
    /// [`Scope::SegmenterOnly`].
    SegmenterOnly,
    /// [`Scope::SegmenterOnly`], and the input normalisation follows the stream (a
    /// [`Tracker`](crate::infer::normalise::Tracker) started from the model's own
    /// normalisation): adaptation to a sensor whose gain or offset drifts.
    SegmenterAndNormalisation,
}

impl From<TrainScope> for Scope {
    fn from(s: TrainScope) -> Scope {
        match s {
            TrainScope::Full => Scope::Full,
            TrainScope::EncoderAndSegmenter => Scope::EncoderAndSegmenter,
            TrainScope::SegmenterOnly | TrainScope::SegmenterAndNormalisation => {
                Scope::SegmenterOnly
            }
        }
    }
}

impl From<Scope> for TrainScope {
    fn from(s: Scope) -> TrainScope {
        match s {
            Scope::Full => TrainScope::Full,
            Scope::EncoderAndSegmenter => TrainScope::EncoderAndSegmenter,
            Scope::SegmenterOnly => TrainScope::SegmenterOnly,
        }
    }
}

/// Optimiser choice on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrainOptimiser {
    /// SGD with this momentum.
    Sgd {
        /// Momentum in `[0, 1)`.
        momentum: f32,
    },
    /// Adam with the default betas.
    Adam,
    /// No gradient: online k-means of the centres ([`crate::train::centres`]), each
    /// sample moving the centre of its label by `1 / memory` (the segmenter scopes only;
    /// `lr`, `batch` and a request's `steps` are not used).
    OnlineKMeans {
        /// Samples a centre remembers (its count's bound), at least 1.
        memory: u16,
        /// Novelty above which a sample is novel: it moves no centre, and when at
        /// least `spawn_count` of the last `spawn_window` samples were novel, a centre
        /// is spawned into an unused slot ([`crate::train::centres::Spawner`]). 2 or
        /// more: nothing is ever novel.
        spawn_above: f32,
        /// Samples the spawn rule looks back on (at most 128).
        spawn_window: u8,
        /// Novel samples among them that spawn a centre.
        spawn_count: u8,
    },
    /// Adam with the default betas and a factored second moment: per weight matrix a
    /// running mean of the squared gradient per row and per column instead of one per
    /// weight ([`crate::train::optim`]).
    Factored,
    /// The factored second moment without a first moment (`beta1 = 0`).
    FactoredRms,
}

/// What happened to a centre slot ([`Response::Centre`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CentreChange {
    /// A new centre took the unused slot.
    Spawned,
    /// The centre starved: the slot is unused now.
    Starved,
    /// The centre merged into this one: the slot is unused now.
    MergedInto(u8),
}

/// A message from the device to the host.
// No heap to box the large variants into: a device holds one `Response` at a time, and
// its size is bounded by the MAX_* constants.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Info`].
    Info(DeviceInfo),
    /// Answer to [`Request::Segment`].
    Segmented {
        /// Most probable cluster.
        label: u8,
        /// Cluster probabilities (`K` values).
        probs: Vec<f32, MAX_CLUSTERS>,
        /// Cosine between `mu` and the nearest centre.
        cosine: f32,
        /// Mean direction (`M` values).
        mu: Vec<f32, MAX_LATENT>,
        /// Posterior concentration.
        kappa: f32,
    },
    /// Answer to [`Request::Encode`].
    Encoded {
        /// Mean direction (`M` values).
        mu: Vec<f32, MAX_LATENT>,
        /// Posterior concentration.
        kappa: f32,
    },
    /// Answer to [`Request::ReadWeights`].
    Weights {
        /// Index of the first value.
        offset: u32,
        /// The values (bit-exact).
        values: Vec<f32, MAX_VALUES>,
    },
    /// A request that needs no other answer was carried out (a non-final
    /// [`Request::LoadWeights`] chunk).
    Ack,
    /// The request failed; the device state is unchanged (except that a failed load is
    /// abandoned).
    Error(ErrorCode),
    /// The final [`Request::LoadWeights`] chunk checked out; the device now runs on the
    /// new weights.
    Loaded {
        /// CRC of the blob, now [`DeviceInfo::weights_crc`].
        weights_crc: u32,
    },
    /// Answer to [`Request::Checkpoint`].
    Checkpointed {
        /// CRC of the weights made persistent.
        weights_crc: u32,
    },
    /// Answer to [`Request::TrainBatch`].
    Trained {
        /// Samples in the device's training buffer.
        buffered: u32,
        /// Optimiser steps taken so far in total.
        steps: u32,
        /// Loss of the last step (NaN when no step was taken).
        loss: f32,
    },
    /// An event of [`Request::TrainBatch`] under [`TrainOptimiser::OnlineKMeans`]: a
    /// centre slot changed (spawned from persistent novelty, or retired because it
    /// starved or merged into another; [`crate::train::centres`]). Sent as it happens,
    /// before the request's [`Response::Trained`] (or `Error`), one per change.
    Centre {
        /// The slot that changed.
        slot: u8,
        /// What happened to it.
        change: CentreChange,
        /// Index, in the request's samples, of the sample after which it happened.
        sample: u16,
        /// Centre slots in use after it.
        in_use: u8,
    },
}

impl Response {
    /// The answer to [`Request::Segment`] for one result of [`crate::infer::model::Model::segment`].
    pub fn segmented(s: &Segment<'_, f32>) -> Result<Response, ErrorCode> {
        let mut r = Response::Ack;
        answer::set_segmented(&mut r, s)?;
        Ok(r)
    }
}

/// What a device reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceInfo {
    /// Protocol version ([`VERSION`]).
    pub protocol: u16,
    /// Version of the `hvae` core the firmware was built with (major, minor, patch).
    pub core: [u16; 3],
    /// Weight blob format version ([`blob::VERSION`]).
    pub blob: u16,
    /// The compiled model's architecture.
    pub shape: ShapeInfo,
    /// How many values of the parameter vector the device holds: `param_len`, or
    /// `inference_param_len` for an inference-only device (no decoder weights).
    pub params_held: u32,
    /// CRC-32 of the weight blob of the weights in use (the weights' identity).
    pub weights_crc: u32,
    /// Longest request frame the device accepts, in bytes with the `0x00`: how many
    /// samples one `Segment` or `Encode` request may carry is [`max_samples`](super::max_samples) of it.
    pub max_frame: u32,
    /// `CAP_*` bits: which requests the device serves.
    pub capabilities: u32,
    /// Bytes of flash the program image takes (0: not measured).
    pub flash_used: u32,
    /// Bytes of static RAM (`.data` + `.bss`; 0: not measured).
    pub ram_static: u32,
    /// Peak stack in bytes since reset, measured by stack painting (0: not measured).
    pub stack_peak: u32,
}

impl DeviceInfo {
    /// The info of a device compiled for `shape` with the current `hvae` version.
    pub fn new(
        shape: &Shape,
        params_held: usize,
        weights_crc: u32,
        max_frame: usize,
        capabilities: u32,
    ) -> DeviceInfo {
        DeviceInfo {
            protocol: VERSION,
            core: CORE_VERSION,
            blob: blob::VERSION,
            shape: ShapeInfo::from(shape),
            params_held: saturate(params_held),
            weights_crc,
            max_frame: saturate(max_frame),
            capabilities,
            flash_used: 0,
            ram_static: 0,
            stack_peak: 0,
        }
    }
}

/// Version of this crate, parsed at compile time.
const CORE_VERSION: [u16; 3] = [
    parse_u16(env!("CARGO_PKG_VERSION_MAJOR")),
    parse_u16(env!("CARGO_PKG_VERSION_MINOR")),
    parse_u16(env!("CARGO_PKG_VERSION_PATCH")),
];

const fn parse_u16(s: &str) -> u16 {
    let b = s.as_bytes();
    let mut v: u16 = 0;
    let mut i = 0;
    while i < b.len() {
        v = v.saturating_mul(10).saturating_add((b[i] - b'0') as u16);
        i += 1;
    }
    v
}

pub(super) fn saturate(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// A [`Shape`] on the wire. The kind codes are the weight blob's ([`crate::store::blob`]):
/// posterior `0` von Mises-Fisher, `1` Power Spherical; likelihood `0` Gaussian, `1`
/// Bernoulli; activation `0` ReLU, `1` tanh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ShapeInfo {
    /// Input size `D`.
    pub input: u32,
    /// Hidden widths, `depth` of them used, the rest 0.
    pub hidden: [u32; MAX_HIDDEN],
    /// Number of hidden layers.
    pub depth: u8,
    /// Latent size `M`.
    pub latent: u32,
    /// Clusters `K`.
    pub clusters: u32,
    /// Posterior code.
    pub posterior: u8,
    /// Likelihood code.
    pub likelihood: u8,
    /// Activation code.
    pub activation: u8,
    /// [`Shape::param_len`].
    pub param_len: u32,
    /// [`Shape::inference_param_len`].
    pub inference_param_len: u32,
}

impl From<&Shape> for ShapeInfo {
    fn from(s: &Shape) -> ShapeInfo {
        let mut hidden = [0u32; MAX_HIDDEN];
        for (l, h) in hidden.iter_mut().enumerate() {
            *h = saturate(s.hidden(l));
        }
        ShapeInfo {
            input: saturate(s.input),
            hidden,
            depth: u8::try_from(s.depth()).unwrap_or(u8::MAX),
            latent: saturate(s.latent),
            clusters: saturate(s.clusters),
            posterior: match s.posterior {
                Posterior::VonMisesFisher => 0,
                Posterior::PowerSpherical => 1,
            },
            likelihood: match s.likelihood {
                Likelihood::Gaussian => 0,
                Likelihood::Bernoulli => 1,
            },
            activation: match s.activation {
                Activation::Relu => 0,
                Activation::Tanh => 1,
            },
            param_len: saturate(s.param_len()),
            inference_param_len: saturate(s.inference_param_len()),
        }
    }
}

impl ShapeInfo {
    /// The shape described, if it is a valid one and its lengths agree.
    pub fn to_shape(&self) -> Option<Shape> {
        let depth = usize::from(self.depth);
        let mut widths = [0usize; MAX_HIDDEN];
        for (w, &h) in widths.iter_mut().zip(&self.hidden) {
            *w = usize::try_from(h).ok()?;
        }
        let shape = Shape::new(
            usize::try_from(self.input).ok()?,
            widths.get(..depth)?,
            usize::try_from(self.latent).ok()?,
            usize::try_from(self.clusters).ok()?,
        )
        .with_posterior(match self.posterior {
            0 => Posterior::VonMisesFisher,
            1 => Posterior::PowerSpherical,
            _ => return None,
        })
        .with_likelihood(match self.likelihood {
            0 => Likelihood::Gaussian,
            1 => Likelihood::Bernoulli,
            _ => return None,
        })
        .with_activation(match self.activation {
            0 => Activation::Relu,
            1 => Activation::Tanh,
            _ => return None,
        });
        shape.validate().ok()?;
        (ShapeInfo::from(&shape) == *self).then_some(shape)
    }
}

/// Why a request failed, as the device reports it in [`Response::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ErrorCode {
    /// Frame: longer than the device's receive buffer ([`FrameError::Oversized`]).
    #[error("frame longer than the device's buffer")]
    Oversized,
    /// Frame: not valid COBS ([`FrameError::BadEncoding`]).
    #[error("frame is not valid COBS")]
    BadEncoding,
    /// Frame: the message ends early ([`FrameError::Truncated`]).
    #[error("frame ends inside the message")]
    Truncated,
    /// Frame: not a request ([`FrameError::Malformed`]).
    #[error("frame is not a valid message")]
    Malformed,
    /// Frame: bytes after the message ([`FrameError::TrailingBytes`]).
    #[error("frame has bytes after the message")]
    TrailingBytes,
    /// This device (program) does not serve this request.
    #[error("request not served by this device")]
    Unsupported,
    /// The sample does not have `D` values (or a batch not a multiple of `D`).
    #[error("sample has the wrong number of values")]
    InputLength,
    /// The sample has a NaN or infinite value.
    #[error("sample contains NaN or infinity")]
    NonFiniteInput,
    /// The encoder's direction is zero for this input ([`InferError::ZeroDirection`]).
    #[error("encoder direction is zero")]
    ZeroDirection,
    /// A cluster centre has zero norm ([`InferError::ZeroCentre`]).
    #[error("a cluster centre has zero norm")]
    ZeroCentre,
    /// Decoder weights are needed but not on the device ([`InferError::NoDecoder`]).
    #[error("device has no decoder weights")]
    NoDecoder,
    /// A computed value overflowed ([`InferError::NonFinite`]).
    #[error("a computed value is not finite")]
    NonFinite,
    /// A parameter range past the values the device holds, or too many values; or a
    /// value of an int8 blob outside its range (a weight of `-128`, a channel's
    /// multiplier, shift or bias, padding that is not zero).
    #[error("parameter range out of bounds")]
    OutOfRange,
    /// A weight chunk not at the next expected offset (`expected`; 0 restarts a load).
    #[error("weight chunk out of order (expected offset {expected})")]
    LoadOrder {
        /// The offset the device expected.
        expected: u32,
    },
    /// The blob is longer or shorter than the compiled model's blob.
    #[error("weight blob has the wrong length")]
    LoadLength,
    /// The blob does not start with the blob magic.
    #[error("not an hvae weight blob")]
    BadMagic,
    /// A blob format version the device does not read.
    #[error("unsupported blob version {0}")]
    UnsupportedVersion(u16),
    /// A header field the device does not accept (header length, flags, kind codes).
    #[error("unsupported weight blob header")]
    BadHeader,
    /// The blob is for another architecture than the compiled one.
    #[error("weight blob is for another architecture")]
    ShapeMismatch,
    /// The blob's CRC trailer does not match its bytes.
    #[error("weight blob CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC stored in the trailer.
        stored: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// Parameter `index` of the blob is NaN or infinite (of an int8 blob: real `index`
    /// is not finite, or a scale not positive).
    #[error("parameter {index} is not finite")]
    NonFiniteWeight {
        /// Index in the flat parameter vector (of an int8 blob: in its reals).
        index: u32,
    },
    /// Writing persistent storage (flash) failed.
    #[error("persistent storage write failed")]
    Storage,
    /// Training refused: too few samples buffered, or settings out of range.
    #[error("training refused")]
    Train,
    /// A bug in the device: an answer did not fit its buffers.
    #[error("internal device error")]
    Internal,
}

impl From<InferError> for ErrorCode {
    fn from(e: InferError) -> ErrorCode {
        match e {
            InferError::InputLength => ErrorCode::InputLength,
            InferError::NonFiniteInput => ErrorCode::NonFiniteInput,
            InferError::BufferLength => ErrorCode::Internal,
            InferError::ZeroDirection => ErrorCode::ZeroDirection,
            InferError::ZeroCentre => ErrorCode::ZeroCentre,
            InferError::NoDecoder => ErrorCode::NoDecoder,
            InferError::NonFinite => ErrorCode::NonFinite,
        }
    }
}

impl From<BlobError> for ErrorCode {
    fn from(e: BlobError) -> ErrorCode {
        match e {
            BlobError::BadMagic => ErrorCode::BadMagic,
            BlobError::UnsupportedVersion(v) => ErrorCode::UnsupportedVersion(v),
            BlobError::BadHeaderLength
            | BlobError::UnsupportedFlags(_)
            | BlobError::UnknownKind
            | BlobError::BadShape(_) => ErrorCode::BadHeader,
            BlobError::ShapeMismatch | BlobError::ParamCount => ErrorCode::ShapeMismatch,
            BlobError::Truncated | BlobError::TrailingBytes => ErrorCode::LoadLength,
            BlobError::BadCrc { stored, computed } => ErrorCode::BadCrc { stored, computed },
            BlobError::NonFinite { index } => ErrorCode::NonFiniteWeight { index },
            BlobError::Int8(e) => e.into(),
            BlobError::BadPadding => ErrorCode::OutOfRange,
            _ => ErrorCode::Internal,
        }
    }
}

/// Why an int8 blob's values do not form a model ([`QuantModel::new`]), as a device
/// refuses its load.
///
/// [`QuantModel::new`]: crate::infer::quant::QuantModel::new
impl From<QuantError> for ErrorCode {
    fn from(e: QuantError) -> ErrorCode {
        match e {
            QuantError::NonFinite { index } => ErrorCode::NonFiniteWeight { index },
            QuantError::WeightRange { .. } | QuantError::Channel { .. } => ErrorCode::OutOfRange,
            QuantError::Shape(_) | QuantError::Length => ErrorCode::ShapeMismatch,
            QuantError::NotCalibrated | QuantError::Range => ErrorCode::Internal,
        }
    }
}

impl From<FrameError> for ErrorCode {
    fn from(e: FrameError) -> ErrorCode {
        match e {
            FrameError::Oversized => ErrorCode::Oversized,
            FrameError::BadEncoding => ErrorCode::BadEncoding,
            FrameError::Truncated => ErrorCode::Truncated,
            FrameError::Malformed => ErrorCode::Malformed,
            FrameError::TrailingBytes => ErrorCode::TrailingBytes,
            FrameError::BufferFull => ErrorCode::Internal,
        }
    }
}
