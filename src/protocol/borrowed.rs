//! Reading a [`Request`] without copies: a reader of postcard's encoding that borrows
//! from the received frame.
//!
//! # Why not `postcard::from_bytes::<Request>`
//! `Request`'s vectors have fixed capacities ([`MAX_SAMPLE`] = 256 floats), so a
//! decoded `Request` is over 1 KiB, and serde builds it through several temporaries:
//! decoding one `Segment` request takes several times that in stack on a Cortex-M4F,
//! most of an 8 KiB RAM budget, and the deserialiser's code takes flash (figures in
//! docs/device.md). [`parse`] reads the same bytes into [`RequestRef`], which points
//! into the frame (`Segment`'s values stay little-endian bytes until the caller copies
//! the `D` it needs), in a few dozen bytes of stack.
//!
//! # Same answers as [`decode`](super::decode)
//! [`parse`] follows postcard 1.x exactly: enum tags and `u32`/`u16` fields are
//! varints (at most 5 / 3 bytes, the last byte's spare bits zero, else `Malformed`),
//! vector lengths `usize` varints of the platform's width (5 bytes on the device, 10 on
//! a 64-bit host); `f32` are 4 bytes little-endian; `u8` is one byte; `bool` and `Option`
//! tags are `0`/`1` (else `Malformed`); a vector reads its elements one at a time and
//! fails `Malformed` at the first element past its capacity, or `Truncated` if the
//! bytes run out first; input that ends early is `Truncated`, bytes left over are
//! `TrailingBytes`. The tests (`tests/protocol.rs`, the proptests, the
//! `protocol_decode` fuzz target) and the firmware's `selftest` on the device check that
//! the two agree, value or error, on every variant and on arbitrary bytes.
//!
//! ```
//! use hvae::protocol::{borrowed::{self, RequestRef}, encode, FrameDecoder, Request};
//! let sample = heapless::Vec::from_slice(&[0.5f32; 64]).unwrap();
//! let mut buf = [0u8; 512];
//! let frame = encode(&Request::Segment { sample }, &mut buf).unwrap();
//! let mut rx = FrameDecoder::<512>::new();
//! let mut got = None;
//! for &b in frame.iter() {
//!     if let Some(body) = rx.push_frame(b) {
//!         got = Some(body.and_then(borrowed::parse).map(|r| r.to_request()));
//!     }
//! }
//! let Some(Ok(Request::Segment { sample })) = got else { panic!() };
//! assert_eq!(sample.len(), 64);
//! ```

use super::{
    FrameError, Request, TrainOptimiser, TrainScope, TrainSettings, MAX_CHUNK, MAX_SAMPLE,
};

/// `f32` values as they arrived: 4 little-endian bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct F32s<'a>(&'a [u8]);

impl<'a> F32s<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// True when there is no value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = f32> + 'a {
        self.0
            .as_chunks::<4>()
            .0
            .iter()
            .map(|&b| f32::from_le_bytes(b))
    }

    /// Copies the values into `out` if it has exactly [`F32s::len`] slots; returns
    /// whether it did.
    pub fn copy_to(&self, out: &mut [f32]) -> bool {
        if out.len() != self.len() {
            return false;
        }
        for (o, v) in out.iter_mut().zip(self.iter()) {
            *o = v;
        }
        true
    }
}

/// A [`Request`] that borrows its vectors from the received frame.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RequestRef<'a> {
    /// [`Request::Info`].
    Info,
    /// [`Request::LoadWeights`].
    LoadWeights {
        /// Byte offset of the chunk in the blob.
        offset: u32,
        /// The chunk (at most `MAX_CHUNK` bytes).
        bytes: &'a [u8],
        /// The final chunk.
        last: bool,
    },
    /// [`Request::Segment`].
    Segment(F32s<'a>),
    /// [`Request::Encode`].
    Encode(F32s<'a>),
    /// [`Request::ReadWeights`].
    ReadWeights {
        /// First parameter index.
        offset: u32,
        /// Number of values.
        count: u16,
    },
    /// [`Request::Checkpoint`].
    Checkpoint,
    /// [`Request::TrainBatch`].
    TrainBatch {
        /// `n * D` raw values.
        samples: F32s<'a>,
        /// Steps to take after buffering.
        steps: u16,
        /// New settings, if any.
        settings: Option<TrainSettings>,
    },
}

impl RequestRef<'_> {
    /// The owned [`Request`] (for tests and hosts: it takes over 1 KiB).
    pub fn to_request(&self) -> Request {
        fn vec<T: Copy, const N: usize>(it: impl Iterator<Item = T>) -> heapless::Vec<T, N> {
            let mut v = heapless::Vec::new();
            for x in it {
                // Lengths were checked against the capacities by `parse`.
                let _ = v.push(x);
            }
            v
        }
        match *self {
            RequestRef::Info => Request::Info,
            RequestRef::LoadWeights {
                offset,
                bytes,
                last,
            } => Request::LoadWeights {
                offset,
                bytes: vec(bytes.iter().copied()),
                last,
            },
            RequestRef::Segment(s) => Request::Segment {
                sample: vec(s.iter()),
            },
            RequestRef::Encode(s) => Request::Encode {
                sample: vec(s.iter()),
            },
            RequestRef::ReadWeights { offset, count } => Request::ReadWeights { offset, count },
            RequestRef::Checkpoint => Request::Checkpoint,
            RequestRef::TrainBatch {
                samples,
                steps,
                settings,
            } => Request::TrainBatch {
                samples: vec(samples.iter()),
                steps,
                settings,
            },
        }
    }
}

/// A cursor over a message's bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self.rest.split_first().ok_or(FrameError::Truncated)?;
        self.rest = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// A varint of at most `max_bytes` bytes whose last byte fits in `last_mask`.
    /// Accumulated in a `usize`: wide enough for a `u32` (the targets are 32- or 64-bit)
    /// and for a length, and cheaper than a `u64` on a 32-bit core.
    fn varint(&mut self, max_bytes: u32, last_mask: u8) -> Result<usize, FrameError> {
        let mut out: usize = 0;
        for i in 0..max_bytes {
            let b = self.byte()?;
            out |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i == max_bytes - 1 && b > last_mask {
                    return Err(FrameError::Malformed);
                }
                return Ok(out);
            }
        }
        Err(FrameError::Malformed)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.varint(5, 0x0F).map(|v| v as u32)
    }

    /// A length: postcard writes `usize` as a varint of the platform's width (5 bytes
    /// on a 32-bit device, 10 on a 64-bit host), so the limits follow `usize::BITS`.
    fn len(&mut self) -> Result<usize, FrameError> {
        const BYTES: u32 = usize::BITS.div_ceil(7);
        const LAST: u8 = (1u8 << (usize::BITS - 7 * (BYTES - 1))) - 1;
        self.varint(BYTES, LAST)
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        // Three bytes, the last holding 2 bits: the value fits a u16.
        self.varint(3, 0x03).map(|v| v as u16)
    }

    fn f32(&mut self) -> Result<f32, FrameError> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `0`/`1` tag (`bool`, `Option`).
    fn flag(&mut self) -> Result<bool, FrameError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FrameError::Malformed),
        }
    }

    /// A vector of `elem`-byte elements with capacity `cap`: its bytes.
    fn seq(&mut self, elem: usize, cap: usize) -> Result<&'a [u8], FrameError> {
        let n = self.len()?;
        if n <= cap {
            return self.take(n * elem);
        }
        // postcard reads element by element and fails at the first one past the
        // capacity, or earlier if the bytes run out.
        self.take(cap * elem)?;
        self.take(elem)?;
        Err(FrameError::Malformed)
    }
}

/// Reads one [`Request`] from a message's bytes (a frame after COBS decoding, as
/// [`FrameDecoder::push_frame`](super::FrameDecoder::push_frame) returns it), borrowing
/// its vectors. Same value or error as [`decode`](super::decode)`::<Request>` on the
/// same bytes. Cost: one pass over the bytes, a few dozen bytes of stack.
pub fn parse(body: &[u8]) -> Result<RequestRef<'_>, FrameError> {
    let mut r = Reader { rest: body };
    let req = match r.u32()? {
        0 => RequestRef::Info,
        1 => {
            let offset = r.u32()?;
            let bytes = r.seq(1, MAX_CHUNK)?;
            let last = r.flag()?;
            RequestRef::LoadWeights {
                offset,
                bytes,
                last,
            }
        }
        2 => RequestRef::Segment(F32s(r.seq(4, MAX_SAMPLE)?)),
        3 => RequestRef::Encode(F32s(r.seq(4, MAX_SAMPLE)?)),
        4 => {
            let offset = r.u32()?;
            let count = r.u16()?;
            RequestRef::ReadWeights { offset, count }
        }
        5 => RequestRef::Checkpoint,
        6 => {
            let samples = F32s(r.seq(4, MAX_SAMPLE)?);
            let steps = r.u16()?;
            let settings = if r.flag()? {
                let scope = match r.u32()? {
                    0 => TrainScope::Full,
                    1 => TrainScope::EncoderAndSegmenter,
                    2 => TrainScope::SegmenterOnly,
                    3 => TrainScope::SegmenterAndNormalisation,
                    _ => return Err(FrameError::Malformed),
                };
                let optimiser = match r.u32()? {
                    0 => TrainOptimiser::Sgd { momentum: r.f32()? },
                    1 => TrainOptimiser::Adam,
                    2 => TrainOptimiser::OnlineKMeans {
                        memory: r.u16()?,
                        spawn_above: r.f32()?,
                        spawn_window: r.byte()?,
                        spawn_count: r.byte()?,
                    },
                    3 => TrainOptimiser::Factored,
                    4 => TrainOptimiser::FactoredRms,
                    _ => return Err(FrameError::Malformed),
                };
                let lr = r.f32()?;
                let batch = r.byte()?;
                Some(TrainSettings {
                    scope,
                    optimiser,
                    lr,
                    batch,
                })
            } else {
                None
            };
            RequestRef::TrainBatch {
                samples,
                steps,
                settings,
            }
        }
        _ => return Err(FrameError::Malformed),
    };
    if !r.rest.is_empty() {
        return Err(FrameError::TrailingBytes);
    }
    Ok(req)
}
