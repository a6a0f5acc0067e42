//! Device <-> host messages: `postcard`-serialised [`Request`]s and [`Response`]s in
//! COBS frames over any byte stream (a UART on a board, the emulated UART under qemu).
//!
//! Enabled by the `protocol` feature; `no_std`, no allocation: every message has a
//! bounded size ([`MAX_SAMPLE`], [`MAX_CHUNK`], ...) and is built in `heapless` vectors.
//!
//! # Framing
//!
//! A frame is the COBS encoding of one postcard message followed by one `0x00` byte
//! ([`encode`]). COBS removes every zero from the message, so `0x00` only ever ends a
//! frame and a receiver that lost track (noise, a reset, a half-written frame) is back in
//! step at the next `0x00`. [`FrameDecoder`] accumulates bytes into a fixed buffer and
//! yields one decoded message per frame, or a typed [`FrameError`] for a frame that is
//! oversized, not valid COBS, cut short or not a message; it never panics and
//! resynchronises at the next `0x00`. Empty frames (`0x00 0x00`) are ignored, so a host
//! may send a lone `0x00` first to flush a half-received frame out of the device.
//!
//! # Conversation
//!
//! Requests are answered in order. Every request gets exactly one [`Response`], except
//! [`Request::Segment`] and [`Request::Encode`], which carry `n >= 1` samples and get
//! one response per sample ([`answer`]); a frame the device cannot decode gets one
//! [`Response::Error`] with the frame error's [`ErrorCode`], and the device keeps
//! serving. A host should therefore send a request, read its responses, and so on
//! (pipelining works too, since the device answers in order, but a damaged request then
//! shifts nothing: it still gets its one error response). How many samples fit a
//! request: [`max_samples`] of the device's [`DeviceInfo::max_frame`].
//!
//! | request | response | notes |
//! |---|---|---|
//! | [`Request::Info`] | [`Response::Info`] | versions, sizes, weights CRC, limits |
//! | [`Request::Segment`] | one [`Response::Segmented`] per sample | `n` samples of `D` raw values, one after the other |
//! | [`Request::Encode`] | one [`Response::Encoded`] per sample | `n` samples |
//! | [`Request::LoadWeights`] | [`Response::Ack`], then [`Response::Loaded`] on the `last` chunk | the weight blob ([`crate::blob`]) in order, [`MAX_CHUNK`] bytes at a time |
//! | [`Request::ReadWeights`] | [`Response::Weights`] | values of the flat parameter vector |
//! | [`Request::Checkpoint`] | [`Response::Checkpointed`] | persist the current weights |
//! | [`Request::TrainBatch`] | [`Response::Trained`] | devices that learn ([`CAP_TRAIN`]) |
//!
//! Loading weights is all or nothing: the device streams the blob through a
//! [`WeightLoader`] (header, sizes and finiteness checked as the bytes arrive, CRC at
//! the end) into storage it is not running from, and switches to the new weights only
//! after the final chunk checked out. Any error aborts the load and the old weights stay
//! in use; a load restarts with a chunk at offset 0.
//!
//! # Compatibility
//!
//! postcard encodes an enum variant by its index, so variants are only ever appended.
//! [`VERSION`] is bumped when an existing message changes.
//!
//! ```
//! use hvae::protocol::{encode, FrameDecoder, Request, MAX_SAMPLE};
//! let sample = heapless::Vec::<f32, MAX_SAMPLE>::from_slice(&[0.5; 64]).unwrap();
//! let mut buf = [0u8; 512];
//! let frame = encode(&Request::Segment { sample: sample.clone() }, &mut buf).unwrap();
//! assert_eq!(frame.last(), Some(&0));
//! let mut rx = FrameDecoder::<512>::new();
//! let (used, got) = rx.feed::<Request>(frame);
//! assert_eq!(used, frame.len());
//! assert_eq!(got, Some(Ok(Request::Segment { sample })));
//! ```

pub mod answer;
pub mod borrowed;

use crate::blob::{self, BlobError};
use crate::model::{InferError, Segment};
use crate::shape::{Activation, Likelihood, Posterior, Scope, Shape, MAX_HIDDEN};
use heapless::Vec;
use serde::de::DeserializeOwned;
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
    /// A chunk of a weight blob ([`crate::blob`] format): `bytes` at byte `offset` of the
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
}

impl From<TrainScope> for Scope {
    fn from(s: TrainScope) -> Scope {
        match s {
            TrainScope::Full => Scope::Full,
            TrainScope::EncoderAndSegmenter => Scope::EncoderAndSegmenter,
            TrainScope::SegmenterOnly => Scope::SegmenterOnly,
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
}

impl Response {
    /// The answer to [`Request::Segment`] for one result of [`crate::model::Model::segment`].
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
    /// samples one `Segment` or `Encode` request may carry is [`max_samples`] of it.
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

fn saturate(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// A [`Shape`] on the wire. The kind codes are the weight blob's ([`crate::blob`]):
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ErrorCode {
    /// Frame: longer than the device's receive buffer ([`FrameError::Oversized`]).
    Oversized,
    /// Frame: not valid COBS ([`FrameError::BadEncoding`]).
    BadEncoding,
    /// Frame: the message ends early ([`FrameError::Truncated`]).
    Truncated,
    /// Frame: not a request ([`FrameError::Malformed`]).
    Malformed,
    /// Frame: bytes after the message ([`FrameError::TrailingBytes`]).
    TrailingBytes,
    /// This device (program) does not serve this request.
    Unsupported,
    /// The sample does not have `D` values (or a batch not a multiple of `D`).
    InputLength,
    /// The sample has a NaN or infinite value.
    NonFiniteInput,
    /// The encoder's direction is zero for this input ([`InferError::ZeroDirection`]).
    ZeroDirection,
    /// A cluster centre has zero norm ([`InferError::ZeroCentre`]).
    ZeroCentre,
    /// Decoder weights are needed but not on the device ([`InferError::NoDecoder`]).
    NoDecoder,
    /// A computed value overflowed ([`InferError::NonFinite`]).
    NonFinite,
    /// A parameter range past the values the device holds, or too many values.
    OutOfRange,
    /// A weight chunk not at the next expected offset (`expected`; 0 restarts a load).
    LoadOrder {
        /// The offset the device expected.
        expected: u32,
    },
    /// The blob is longer or shorter than the compiled model's blob.
    LoadLength,
    /// The blob does not start with the blob magic.
    BadMagic,
    /// A blob format version the device does not read.
    UnsupportedVersion(u16),
    /// A header field the device does not accept (header length, flags, kind codes).
    BadHeader,
    /// The blob is for another architecture than the compiled one.
    ShapeMismatch,
    /// The blob's CRC trailer does not match its bytes.
    BadCrc {
        /// CRC stored in the trailer.
        stored: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// Parameter `index` of the blob is NaN or infinite.
    NonFiniteWeight {
        /// Index in the flat parameter vector.
        index: u32,
    },
    /// Writing persistent storage (flash) failed.
    Storage,
    /// Training refused: too few samples buffered, or settings out of range.
    Train,
    /// A bug in the device: an answer did not fit its buffers.
    Internal,
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ErrorCode::Oversized => f.write_str("frame longer than the device's buffer"),
            ErrorCode::BadEncoding => f.write_str("frame is not valid COBS"),
            ErrorCode::Truncated => f.write_str("frame ends inside the message"),
            ErrorCode::Malformed => f.write_str("frame is not a valid message"),
            ErrorCode::TrailingBytes => f.write_str("frame has bytes after the message"),
            ErrorCode::Unsupported => f.write_str("request not served by this device"),
            ErrorCode::InputLength => f.write_str("sample has the wrong number of values"),
            ErrorCode::NonFiniteInput => f.write_str("sample contains NaN or infinity"),
            ErrorCode::ZeroDirection => f.write_str("encoder direction is zero"),
            ErrorCode::ZeroCentre => f.write_str("a cluster centre has zero norm"),
            ErrorCode::NoDecoder => f.write_str("device has no decoder weights"),
            ErrorCode::NonFinite => f.write_str("a computed value is not finite"),
            ErrorCode::OutOfRange => f.write_str("parameter range out of bounds"),
            ErrorCode::LoadOrder { expected } => {
                write!(f, "weight chunk out of order (expected offset {expected})")
            }
            ErrorCode::LoadLength => f.write_str("weight blob has the wrong length"),
            ErrorCode::BadMagic => f.write_str("not an hvae weight blob"),
            ErrorCode::UnsupportedVersion(v) => write!(f, "unsupported blob version {v}"),
            ErrorCode::BadHeader => f.write_str("unsupported weight blob header"),
            ErrorCode::ShapeMismatch => f.write_str("weight blob is for another architecture"),
            ErrorCode::BadCrc { stored, computed } => write!(
                f,
                "weight blob CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            ErrorCode::NonFiniteWeight { index } => write!(f, "parameter {index} is not finite"),
            ErrorCode::Storage => f.write_str("persistent storage write failed"),
            ErrorCode::Train => f.write_str("training refused"),
            ErrorCode::Internal => f.write_str("internal device error"),
        }
    }
}

impl core::error::Error for ErrorCode {}

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
            _ => ErrorCode::Internal,
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

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameError {
    /// More bytes than the decoder's buffer arrived before the `0x00`; they were
    /// dropped up to the next `0x00`.
    Oversized,
    /// The frame is not valid COBS (typically a frame cut short).
    BadEncoding,
    /// Valid COBS, but the message ends early.
    Truncated,
    /// Valid COBS, but not a message of the expected type.
    Malformed,
    /// A message followed by extra bytes.
    TrailingBytes,
    /// [`encode`]: the output buffer is too small.
    BufferFull,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameError::Oversized => "frame longer than the receive buffer",
            FrameError::BadEncoding => "frame is not valid COBS",
            FrameError::Truncated => "frame ends inside the message",
            FrameError::Malformed => "frame is not a valid message",
            FrameError::TrailingBytes => "frame has bytes after the message",
            FrameError::BufferFull => "output buffer too small for the frame",
        })
    }
}

impl core::error::Error for FrameError {}

/// Serialises `msg` and COBS-encodes it into `buf`, with the closing `0x00`; returns the
/// frame (the bytes to send).
pub fn encode<'a, T: Serialize>(msg: &T, buf: &'a mut [u8]) -> Result<&'a mut [u8], FrameError> {
    postcard::to_slice_cobs(msg, buf).map_err(|_| FrameError::BufferFull)
}

/// Decodes one frame's bytes (COBS, without the closing `0x00`) in place into a message.
pub fn decode<T: DeserializeOwned>(frame: &mut [u8]) -> Result<T, FrameError> {
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::BadEncoding)?;
    decode_body(frame.get(..n).ok_or(FrameError::BadEncoding)?)
}

/// A message from its bytes (a frame after COBS decoding, as
/// [`FrameDecoder::push_frame`] returns it); the same errors as [`decode`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok(_) => Err(FrameError::TrailingBytes),
        Err(postcard::Error::DeserializeUnexpectedEnd) => Err(FrameError::Truncated),
        Err(_) => Err(FrameError::Malformed),
    }
}

/// Most bytes COBS turns `n` bytes into (without the closing `0x00`).
pub const fn cobs_max_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// Bytes of a postcard varint for values up to `max`.
const fn varint_len(max: usize) -> usize {
    let mut n = 1;
    let mut v = max >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Longest frame (with its `0x00`) of any [`Request`] whose samples hold at most
/// `sample_values` values (`D` for a device that only infers; the training buffer's
/// batch for one that learns): the size of the receive buffer a device needs. Frames
/// of longer samples are reported as [`ErrorCode::Oversized`].
pub const fn max_request_frame(sample_values: usize) -> usize {
    let n = if sample_values > MAX_SAMPLE {
        MAX_SAMPLE
    } else {
        sample_values
    };
    let seq = varint_len(n) + 4 * n;
    // tag, offset (u32), length, bytes, last
    let load = 1 + 5 + varint_len(MAX_CHUNK) + MAX_CHUNK + 1;
    // tag, samples, steps (u16), Some, scope, optimiser (tag + momentum), lr, batch
    let train = 1 + seq + 3 + 1 + 1 + 5 + 4 + 1;
    let sample = sample_message_len(n);
    let mut m = load;
    if train > m {
        m = train;
    }
    if sample > m {
        m = sample;
    }
    cobs_max_len(m) + 1
}

/// Longest message (before COBS) of a [`Request::Segment`] or [`Request::Encode`] of
/// `values` values: tag, length, the floats.
const fn sample_message_len(values: usize) -> usize {
    1 + varint_len(values) + 4 * values
}

/// How many samples of `d` values one [`Request::Segment`] or [`Request::Encode`] frame
/// carries to a device whose receive buffer is `max_frame` bytes
/// ([`DeviceInfo::max_frame`]); at most `MAX_SAMPLE / d`, 0 if not even one fits.
pub const fn max_samples(max_frame: usize, d: usize) -> usize {
    if d == 0 {
        return 0;
    }
    let mut n = MAX_SAMPLE / d;
    while n > 0 {
        // The COBS frame and its `0x00` must fit: `len + 1 <= max_frame`.
        if cobs_max_len(sample_message_len(n * d)) < max_frame {
            return n;
        }
        n -= 1;
    }
    0
}

/// Longest frame (with its `0x00`) of any [`Response`] of a device with `clusters`
/// clusters and `latent` latent dimensions: the size of the transmit buffer it needs.
pub const fn max_response_frame(clusters: usize, latent: usize) -> usize {
    let k = if clusters > MAX_CLUSTERS {
        MAX_CLUSTERS
    } else {
        clusters
    };
    let m = if latent > MAX_LATENT {
        MAX_LATENT
    } else {
        latent
    };
    // tag, label, probs, cosine, mu, kappa
    let seg = 1 + 1 + varint_len(k) + 4 * k + 4 + varint_len(m) + 4 * m + 4;
    // tag, offset, values
    let weights = 1 + 5 + varint_len(MAX_VALUES) + 4 * MAX_VALUES;
    // tag, protocol, core, blob, shape (input, 4 hidden, depth, latent, clusters, 3
    // codes, 2 lengths), params_held, crc, max_frame, capabilities, 3 memory figures
    let info = 1 + 3 + 3 * 3 + 3 + (5 + 4 * 5 + 1 + 5 + 5 + 3 + 5 + 5) + 5 * 7;
    // tag, error tag, largest payload (two u32)
    let error = 1 + 1 + 10;
    let mut x = seg;
    if weights > x {
        x = weights;
    }
    if info > x {
        x = info;
    }
    if error > x {
        x = error;
    }
    cobs_max_len(x) + 1
}

/// Longest [`Response`] frame of any device: the receive buffer a host needs.
pub const MAX_RESPONSE_FRAME: usize = max_response_frame(MAX_CLUSTERS, MAX_LATENT);
/// Longest [`Request`] frame of any device.
pub const MAX_REQUEST_FRAME: usize = max_request_frame(MAX_SAMPLE);

/// Accumulates a byte stream into a fixed buffer of `N` bytes and decodes one message
/// per `0x00`-terminated frame. Never panics; after any error it resynchronises at the
/// next `0x00`.
#[derive(Clone, Debug)]
pub struct FrameDecoder<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Dropping the rest of an oversized frame, up to the next `0x00`.
    discarding: bool,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// An empty decoder. `N` is the longest frame accepted, without its `0x00`.
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; N],
            len: 0,
            discarding: false,
        }
    }

    /// Forgets any partial frame.
    pub fn reset(&mut self) {
        self.len = 0;
        self.discarding = false;
    }

    /// Bytes of the frame received so far (0 between frames).
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Takes one byte. Returns `Some` when it completes a frame (a message, or why the
    /// frame is not one) and also, once, when it overflows the buffer
    /// ([`FrameError::Oversized`]; the rest of that frame is then dropped silently).
    pub fn push<T: DeserializeOwned>(&mut self, byte: u8) -> Option<Result<T, FrameError>> {
        Some(self.push_frame(byte)?.and_then(decode_body))
    }

    /// [`FrameDecoder::push`] without the deserialisation: when `byte` completes a frame,
    /// returns the frame's message bytes (COBS-decoded in place in the buffer), for
    /// [`borrowed::parse`] or another reader that borrows them; the same errors.
    pub fn push_frame(&mut self, byte: u8) -> Option<Result<&[u8], FrameError>> {
        if byte == 0 {
            let len = core::mem::replace(&mut self.len, 0);
            if core::mem::replace(&mut self.discarding, false) || len == 0 {
                return None;
            }
            let frame = self.buf.get_mut(..len)?;
            return Some(match cobs::decode_in_place(frame) {
                Ok(n) => frame.get(..n).ok_or(FrameError::BadEncoding),
                Err(_) => Err(FrameError::BadEncoding),
            });
        }
        if self.discarding {
            return None;
        }
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
                None
            }
            None => {
                self.len = 0;
                self.discarding = true;
                Some(Err(FrameError::Oversized))
            }
        }
    }

    /// Takes bytes until one completes a frame or overflows; returns how many were
    /// consumed and that result. Call again with the rest.
    pub fn feed<T: DeserializeOwned>(
        &mut self,
        bytes: &[u8],
    ) -> (usize, Option<Result<T, FrameError>>) {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(r) = self.push(b) {
                return (i + 1, Some(r));
            }
        }
        (bytes.len(), None)
    }
}

/// The first [`blob::HEADER_LEN`] bytes of every weight blob of `shape` (format version
/// [`blob::VERSION`]): what [`blob::write`] puts before the parameters. A `const fn`, so
/// a device can check the CRC of compiled-in weights against the blob's without the
/// blob. Sizes that do not fit the header's fields are stored saturated; such a shape
/// has no blob.
pub const fn blob_header(shape: &Shape) -> [u8; blob::HEADER_LEN] {
    const fn put(h: &mut [u8; blob::HEADER_LEN], at: usize, v: usize) {
        let v = if v > u32::MAX as usize {
            u32::MAX
        } else {
            v as u32
        };
        let b = v.to_le_bytes();
        h[at] = b[0];
        h[at + 1] = b[1];
        h[at + 2] = b[2];
        h[at + 3] = b[3];
    }
    let mut h = [0u8; blob::HEADER_LEN];
    h[0] = blob::MAGIC[0];
    h[1] = blob::MAGIC[1];
    h[2] = blob::MAGIC[2];
    h[3] = blob::MAGIC[3];
    let v = blob::VERSION.to_le_bytes();
    h[4] = v[0];
    h[5] = v[1];
    let l = (blob::HEADER_LEN as u16).to_le_bytes();
    h[6] = l[0];
    h[7] = l[1];
    // 8..12: flags, none in version 1.
    h[12] = match shape.posterior {
        Posterior::VonMisesFisher => 0,
        Posterior::PowerSpherical => 1,
    };
    h[13] = match shape.likelihood {
        Likelihood::Gaussian => 0,
        Likelihood::Bernoulli => 1,
    };
    h[14] = match shape.activation {
        Activation::Relu => 0,
        Activation::Tanh => 1,
    };
    h[15] = if shape.depth() > u8::MAX as usize {
        u8::MAX
    } else {
        shape.depth() as u8
    };
    put(&mut h, 16, shape.input);
    let mut l = 0;
    while l < MAX_HIDDEN {
        put(&mut h, 20 + 4 * l, shape.hidden(l));
        l += 1;
    }
    put(&mut h, 36, shape.latent);
    put(&mut h, 40, shape.clusters);
    put(&mut h, 44, shape.param_len());
    h
}

/// CRC-32/ISO-HDLC as the weight blob uses it, bitwise: loading runs once per load, so
/// it spends no flash on a table.
static CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

/// Bytes of the blob's CRC trailer.
const CRC_LEN: usize = 4;

/// Streams a weight blob ([`crate::blob`] format) arriving in chunks, for a device that
/// cannot hold the whole blob in RAM: checks the header against the compiled shape as
/// soon as it is complete, hands each parameter to a sink as its four bytes arrive
/// (rejecting NaN and infinity), and checks length and CRC at the end.
///
/// The values go to the sink *before* the CRC is known, so the sink must write to
/// storage the device is not running from, and switch only when [`WeightLoader::finish`]
/// succeeds. Any error leaves the loader expecting a new blob from offset 0.
#[derive(Clone)]
pub struct WeightLoader {
    shape: Shape,
    /// Bytes of the blob accepted so far.
    received: usize,
    header: [u8; blob::HEADER_LEN],
    /// Bytes of a parameter split across chunks.
    word: [u8; 4],
    trailer: [u8; CRC_LEN],
    digest: crc::Digest<'static, u32, crc::NoTable>,
}

impl core::fmt::Debug for WeightLoader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WeightLoader")
            .field("shape", &self.shape)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl WeightLoader {
    /// A loader for blobs of `shape` (the device's compiled shape).
    pub const fn new(shape: Shape) -> WeightLoader {
        WeightLoader {
            shape,
            received: 0,
            header: [0; blob::HEADER_LEN],
            word: [0; 4],
            trailer: [0; CRC_LEN],
            digest: CRC.digest(),
        }
    }

    /// Abandons the current blob.
    pub fn reset(&mut self) {
        *self = WeightLoader::new(self.shape);
    }

    /// Bytes of the current blob accepted so far (the offset the next chunk must have).
    pub fn received(&self) -> usize {
        self.received
    }

    /// Total bytes of a blob for the compiled shape.
    pub fn blob_len(&self) -> usize {
        blob::blob_len(&self.shape)
    }

    /// Takes the chunk `bytes` at byte `offset` of the blob; `sink(index, value)` gets
    /// every parameter completed by it, in order. A chunk at offset 0 starts a new blob.
    /// On any error (out-of-order chunk, bad header, non-finite value, blob too long,
    /// or an error from the sink) the blob is abandoned.
    pub fn feed<F>(&mut self, offset: u32, bytes: &[u8], mut sink: F) -> Result<(), ErrorCode>
    where
        F: FnMut(usize, f32) -> Result<(), ErrorCode>,
    {
        if offset == 0 {
            self.reset();
        }
        if usize::try_from(offset).ok() != Some(self.received) {
            let expected = saturate(self.received);
            self.reset();
            return Err(ErrorCode::LoadOrder { expected });
        }
        let r = self.feed_inner(bytes, &mut sink);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn feed_inner<F>(&mut self, bytes: &[u8], sink: &mut F) -> Result<(), ErrorCode>
    where
        F: FnMut(usize, f32) -> Result<(), ErrorCode>,
    {
        let total = self.blob_len();
        let values_end = total - CRC_LEN;
        if bytes.len() > total - self.received {
            return Err(ErrorCode::LoadLength);
        }
        for &b in bytes {
            let at = self.received;
            if at < values_end {
                self.digest.update(&[b]);
            }
            if at < blob::HEADER_LEN {
                self.header[at] = b;
                self.received += 1;
                if self.received == blob::HEADER_LEN {
                    self.check_header()?;
                }
            } else if at < values_end {
                let k = (at - blob::HEADER_LEN) % 4;
                self.word[k] = b;
                self.received += 1;
                if k == 3 {
                    let index = (at - blob::HEADER_LEN) / 4;
                    let v = f32::from_le_bytes(self.word);
                    if !v.is_finite() {
                        return Err(ErrorCode::NonFiniteWeight {
                            index: saturate(index),
                        });
                    }
                    sink(index, v)?;
                }
            } else if let Some(t) = self.trailer.get_mut(at - values_end) {
                // Always in range: `bytes` was checked against what is left.
                *t = b;
                self.received += 1;
            }
        }
        Ok(())
    }

    /// Checks the complete header against the compiled shape's, reporting the first
    /// difference in the blob parser's order.
    fn check_header(&self) -> Result<(), ErrorCode> {
        let h = &self.header;
        let mine = blob_header(&self.shape);
        if h[..4] != mine[..4] {
            return Err(ErrorCode::BadMagic);
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != blob::VERSION {
            return Err(ErrorCode::UnsupportedVersion(version));
        }
        // Header length, flags, kind codes.
        if h[6..12] != mine[6..12] || h[12..15].iter().any(|&c| c > 1) {
            return Err(ErrorCode::BadHeader);
        }
        if *h != mine {
            return Err(ErrorCode::ShapeMismatch);
        }
        Ok(())
    }

    /// After the last chunk: checks that the whole blob arrived and that its CRC
    /// matches; returns the CRC (the new weights' identity). The loader is then ready
    /// for another blob either way.
    pub fn finish(&mut self) -> Result<u32, ErrorCode> {
        let done = self.received == self.blob_len();
        let computed = self.digest.clone().finalize();
        let stored = u32::from_le_bytes(self.trailer);
        self.reset();
        if !done {
            return Err(ErrorCode::LoadLength);
        }
        if stored != computed {
            return Err(ErrorCode::BadCrc { stored, computed });
        }
        Ok(computed)
    }
}
