//! Receiving requests without copies: COBS frames into one fixed buffer, and a reader
//! of postcard's encoding of [`Request`] that borrows from that buffer.
//!
//! # Why not `postcard::from_bytes::<Request>`
//! `Request`'s vectors have fixed capacities (`MAX_SAMPLE` = 256 floats), so a decoded
//! `Request` is over 1 KiB, and serde builds it through several temporaries: decoding
//! one `Segment` request took 7 KiB of stack on the Cortex-M4F, most of the 8 KiB RAM
//! budget, and the deserialiser took 4 KiB of flash. [`parse`] reads the same bytes
//! into [`Req`], which points into the frame (`Segment`'s values stay little-endian
//! bytes until the service copies the `D` it needs), in a few dozen bytes of stack.
//!
//! # Same answers as the core's decoder
//! [`parse`] follows postcard 1.x on a 32-bit target exactly: enum tags, lengths and
//! `u32`/`u16` fields are varints (at most 5 / 3 bytes, the last byte's spare bits
//! zero, else `Malformed`); `f32` are 4 bytes little-endian; `u8` is one byte; `bool`
//! and `Option` tags are `0`/`1` (else `Malformed`); a vector reads its elements one at
//! a time and fails `Malformed` at the first element past its capacity, or `Truncated`
//! if the bytes run out first; input that ends early is `Truncated`, bytes left over
//! are `TrailingBytes`. `selftest` checks on the device that [`parse`] and
//! `hvae::protocol::decode::<Request>` agree (value or error) on every variant and on
//! thousands of truncated and corrupted encodings.

use hvae::protocol::{
    FrameError, Request, TrainOptimiser, TrainScope, TrainSettings, MAX_CHUNK, MAX_SAMPLE,
};

/// `f32` values as they arrived: 4 little-endian bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
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
pub enum Req<'a> {
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

impl Req<'_> {
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
            Req::Info => Request::Info,
            Req::LoadWeights {
                offset,
                bytes,
                last,
            } => Request::LoadWeights {
                offset,
                bytes: vec(bytes.iter().copied()),
                last,
            },
            Req::Segment(s) => Request::Segment {
                sample: vec(s.iter()),
            },
            Req::Encode(s) => Request::Encode {
                sample: vec(s.iter()),
            },
            Req::ReadWeights { offset, count } => Request::ReadWeights { offset, count },
            Req::Checkpoint => Request::Checkpoint,
            Req::TrainBatch {
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
    fn varint(&mut self, max_bytes: u32, last_mask: u8) -> Result<u32, FrameError> {
        let mut out: u32 = 0;
        for i in 0..max_bytes {
            let b = self.byte()?;
            out |= u32::from(b & 0x7F) << (7 * i);
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
        self.varint(5, 0x0F)
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
        let n = self.u32()? as usize;
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

/// Reads one [`Request`] from a message's bytes (a frame after COBS decoding).
pub fn parse(body: &[u8]) -> Result<Req<'_>, FrameError> {
    let mut r = Reader { rest: body };
    let req = match r.u32()? {
        0 => Req::Info,
        1 => {
            let offset = r.u32()?;
            let bytes = r.seq(1, MAX_CHUNK)?;
            let last = r.flag()?;
            Req::LoadWeights {
                offset,
                bytes,
                last,
            }
        }
        2 => Req::Segment(F32s(r.seq(4, MAX_SAMPLE)?)),
        3 => Req::Encode(F32s(r.seq(4, MAX_SAMPLE)?)),
        4 => {
            let offset = r.u32()?;
            let count = r.u16()?;
            Req::ReadWeights { offset, count }
        }
        5 => Req::Checkpoint,
        6 => {
            let samples = F32s(r.seq(4, MAX_SAMPLE)?);
            let steps = r.u16()?;
            let settings = if r.flag()? {
                let scope = match r.u32()? {
                    0 => TrainScope::Full,
                    1 => TrainScope::EncoderAndSegmenter,
                    2 => TrainScope::SegmenterOnly,
                    _ => return Err(FrameError::Malformed),
                };
                let optimiser = match r.u32()? {
                    0 => TrainOptimiser::Sgd { momentum: r.f32()? },
                    1 => TrainOptimiser::Adam,
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
            Req::TrainBatch {
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

/// Collects a byte stream into COBS frames in a fixed buffer of `N` bytes (the longest
/// frame accepted, without its `0x00`), with the core `FrameDecoder`'s rules: a `0x00`
/// ends a frame, an empty frame is ignored, a frame longer than `N` is reported once as
/// [`FrameError::Oversized`] and dropped up to the next `0x00`, and a frame that is not
/// valid COBS is [`FrameError::BadEncoding`].
#[derive(Clone, Debug)]
pub struct Receiver<const N: usize> {
    buf: [u8; N],
    len: usize,
    discarding: bool,
}

impl<const N: usize> Default for Receiver<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Receiver<N> {
    /// An empty receiver.
    pub const fn new() -> Self {
        Receiver {
            buf: [0; N],
            len: 0,
            discarding: false,
        }
    }

    /// Takes one byte; when it ends a frame, returns the frame's decoded message bytes
    /// (or why there are none).
    pub fn push(&mut self, byte: u8) -> Option<Result<&[u8], FrameError>> {
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
}
