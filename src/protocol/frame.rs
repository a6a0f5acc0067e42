//! Framing: postcard messages in COBS frames, and the bounds on a frame's length.

use super::messages::{MAX_CHUNK, MAX_CLUSTERS, MAX_LATENT, MAX_SAMPLE, MAX_VALUES};
use postcard::ser_flavors::{Cobs, Flavor, Slice};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameError {
    /// More bytes than the decoder's buffer arrived before the `0x00`; they were
    /// dropped up to the next `0x00`.
    #[error("frame longer than the receive buffer")]
    Oversized,
    /// The frame is not valid COBS (typically a frame cut short).
    #[error("frame is not valid COBS")]
    BadEncoding,
    /// Valid COBS, but the message ends early.
    #[error("frame ends inside the message")]
    Truncated,
    /// Valid COBS, but not a message of the expected type.
    #[error("frame is not a valid message")]
    Malformed,
    /// A message followed by extra bytes.
    #[error("frame has bytes after the message")]
    TrailingBytes,
    /// [`encode`]: the output buffer is too small.
    #[error("output buffer too small for the frame")]
    BufferFull,
}

/// Serialises `msg` and COBS-encodes it into `buf`, with the closing `0x00`; returns the
/// frame (the bytes to send).
pub fn encode<'a, T: Serialize>(msg: &T, buf: &'a mut [u8]) -> Result<&'a mut [u8], FrameError> {
    let cobs = Cobs::try_new(Slice::new(buf)).map_err(|_| FrameError::BufferFull)?;
    postcard::serialize_with_flavor(msg, OneCall(cobs)).map_err(|_| FrameError::BufferFull)
}

/// postcard's COBS flavor behind one out-of-line call per byte: the same bytes, but the
/// serialiser of a large message enum calls one function instead of carrying the COBS
/// step inlined at every field (kilobytes of flash on a small device).
struct OneCall<'a>(Cobs<Slice<'a>>);

impl<'a> Flavor for OneCall<'a> {
    type Output = &'a mut [u8];

    #[inline(never)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.try_push(data)
    }

    #[inline(never)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        data.iter().try_for_each(|&b| self.0.try_push(b))
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        self.0.finalize()
    }
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

/// Longest frame (with its `0x00`) of any [`Request`](super::Request) whose samples hold at most
/// `sample_values` values (`D` for a device that only infers; the training buffer's
/// batch for one that learns): the size of the receive buffer a device needs. Frames
/// of longer samples are reported as [`ErrorCode::Oversized`](super::ErrorCode::Oversized).
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

/// Longest message (before COBS) of a [`Request::Segment`](super::Request::Segment) or [`Request::Encode`](super::Request::Encode) of
/// `values` values: tag, length, the floats.
const fn sample_message_len(values: usize) -> usize {
    1 + varint_len(values) + 4 * values
}

/// How many samples of `d` values one [`Request::Segment`](super::Request::Segment) or [`Request::Encode`](super::Request::Encode) frame
/// carries to a device whose receive buffer is `max_frame` bytes
/// ([`DeviceInfo::max_frame`](super::DeviceInfo::max_frame)); at most `MAX_SAMPLE / d`, 0 if not even one fits.
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

/// Longest frame (with its `0x00`) of any [`Response`](super::Response) of a device with `clusters`
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

/// Longest [`Response`](super::Response) frame of any device: the receive buffer a host needs.
pub const MAX_RESPONSE_FRAME: usize = max_response_frame(MAX_CLUSTERS, MAX_LATENT);
/// Longest [`Request`](super::Request) frame of any device.
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
    /// [`borrowed::parse`](super::borrowed::parse) or another reader that borrows them; the same errors.
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
