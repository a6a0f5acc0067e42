//! Loading weights in chunks: the blob streamed into storage, checked as it arrives.

use super::messages::{saturate, ErrorCode};
use crate::infer::quant;
use crate::shape::Shape;
use crate::store::blob;
use core::marker::PhantomData;

pub use crate::store::blob::{blob_header, int8_blob_header};

/// The format of the blobs a [`WeightLoader`] takes: `f32` parameters ([`F32Blob`],
/// format version [`blob::VERSION`]) or the int8 variant ([`Int8Blob`],
/// [`blob::VERSION_INT8`]). After the header, both are a sequence of 4-byte words (the
/// int8 weights padded to a whole word) and the CRC.
pub trait BlobFormat {
    /// What the sink gets for each word after the header.
    type Value: Copy;
    /// The format version.
    const VERSION: u16;
    /// Bytes of the header.
    const HEADER_LEN: usize;
    /// The header of a blob of `shape` (the first [`BlobFormat::HEADER_LEN`] bytes).
    fn header(shape: &Shape) -> [u8; blob::HEADER_LEN_INT8];
    /// Total bytes of a blob of `shape`.
    fn blob_len(shape: &Shape) -> usize;
    /// The value of word `index` after the header of a blob of `shape`, or the error that
    /// refuses it.
    fn value(shape: &Shape, index: usize, word: [u8; 4]) -> Result<Self::Value, ErrorCode>;
    /// The word of a value, as the blob stores it (little-endian).
    fn word(value: Self::Value) -> u32;
}

/// Blobs of `f32` parameters ([`blob::VERSION`]): each word a parameter, refused when it
/// is NaN or infinite ([`ErrorCode::NonFiniteWeight`]).
#[derive(Clone, Copy, Debug)]
pub struct F32Blob;

/// Int8 blobs ([`blob::VERSION_INT8`]): the words of the int8 weights (four to a word,
/// the last padded), the `i32` channels and the `f32` reals, handed on as they are
/// (`u32`, little-endian), the padding checked zero; their values are checked once the
/// blob is whole ([`crate::infer::quant::QuantModel::new`]).
#[derive(Clone, Copy, Debug)]
pub struct Int8Blob;

impl BlobFormat for F32Blob {
    type Value = f32;
    const VERSION: u16 = blob::VERSION;
    const HEADER_LEN: usize = blob::HEADER_LEN;
    fn header(shape: &Shape) -> [u8; blob::HEADER_LEN_INT8] {
        let mut h = [0u8; blob::HEADER_LEN_INT8];
        let (head, _) = h.split_at_mut(blob::HEADER_LEN);
        head.copy_from_slice(&blob_header(shape));
        h
    }
    fn blob_len(shape: &Shape) -> usize {
        blob::blob_len(shape)
    }
    #[inline(always)]
    fn value(_: &Shape, index: usize, word: [u8; 4]) -> Result<f32, ErrorCode> {
        let v = f32::from_le_bytes(word);
        if !v.is_finite() {
            return Err(ErrorCode::NonFiniteWeight {
                index: saturate(index),
            });
        }
        Ok(v)
    }
    #[inline(always)]
    fn word(value: f32) -> u32 {
        value.to_bits()
    }
}

impl BlobFormat for Int8Blob {
    type Value = u32;
    const VERSION: u16 = blob::VERSION_INT8;
    const HEADER_LEN: usize = blob::HEADER_LEN_INT8;
    fn header(shape: &Shape) -> [u8; blob::HEADER_LEN_INT8] {
        int8_blob_header(shape)
    }
    /// [`blob::int8_blob_len`] of a valid shape (the device's), in plain arithmetic.
    fn blob_len(shape: &Shape) -> usize {
        let words =
            quant::weight_len(shape).div_ceil(4) + quant::int_len(shape) + quant::float_len(shape);
        blob::HEADER_LEN_INT8 + 4 * words + CRC_LEN
    }
    /// The padding after the weights must be zero ([`ErrorCode::OutOfRange`], as
    /// [`blob::read_int8`] refuses it).
    fn value(shape: &Shape, index: usize, word: [u8; 4]) -> Result<u32, ErrorCode> {
        let w = quant::weight_len(shape);
        let used = w % 4;
        if used != 0 && index == w / 4 && word.iter().skip(used).any(|&b| b != 0) {
            return Err(ErrorCode::OutOfRange);
        }
        Ok(u32::from_le_bytes(word))
    }
    #[inline(always)]
    fn word(value: u32) -> u32 {
        value
    }
}

/// CRC-32/ISO-HDLC as the weight blob uses it, bitwise: loading runs once per load, so
/// it spends no flash on a table.
static CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

/// Bytes of the blob's CRC trailer.
const CRC_LEN: usize = 4;

/// Streams a weight blob ([`crate::store::blob`] format; `V` says which variant:
/// [`F32Blob`] by default, [`Int8Blob`]) arriving in chunks, for a device that cannot
/// hold the whole blob in RAM: checks the header against the compiled shape as soon as
/// it is complete, hands each word after it to a sink as its four bytes arrive (an
/// `f32` parameter, NaN and infinity rejected; or an int8 blob's word as it is), and
/// checks length and CRC at the end.
///
/// The values go to the sink *before* the CRC is known, so the sink must write to
/// storage the device is not running from, and switch only when [`WeightLoader::finish`]
/// succeeds. Any error leaves the loader expecting a new blob from offset 0.
pub struct WeightLoader<V = F32Blob> {
    shape: Shape,
    /// Bytes of the blob accepted so far.
    received: usize,
    /// The header (the first `V::HEADER_LEN` bytes used).
    header: [u8; blob::HEADER_LEN_INT8],
    /// Bytes of a parameter split across chunks.
    word: [u8; 4],
    trailer: [u8; CRC_LEN],
    digest: crc::Digest<'static, u32, crc::NoTable>,
    _format: PhantomData<V>,
}

impl<V> Clone for WeightLoader<V> {
    fn clone(&self) -> Self {
        WeightLoader {
            shape: self.shape,
            received: self.received,
            header: self.header,
            word: self.word,
            trailer: self.trailer,
            digest: self.digest.clone(),
            _format: PhantomData,
        }
    }
}

impl<V> core::fmt::Debug for WeightLoader<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WeightLoader")
            .field("shape", &self.shape)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl WeightLoader {
    /// A loader for `f32` blobs of `shape` (the device's compiled shape).
    pub const fn new(shape: Shape) -> Self {
        Self::of_format(shape)
    }
}

impl<V: BlobFormat> WeightLoader<V> {
    /// A loader for blobs of `shape` (the device's compiled shape) in the format `V`
    /// (`WeightLoader::<Int8Blob>::of_format(shape)`).
    pub const fn of_format(shape: Shape) -> Self {
        WeightLoader {
            shape,
            received: 0,
            header: [0; blob::HEADER_LEN_INT8],
            word: [0; 4],
            trailer: [0; CRC_LEN],
            digest: CRC.digest(),
            _format: PhantomData,
        }
    }

    /// Abandons the current blob.
    pub fn reset(&mut self) {
        *self = Self::of_format(self.shape);
    }

    /// Bytes of the current blob accepted so far (the offset the next chunk must have).
    pub fn received(&self) -> usize {
        self.received
    }

    /// Total bytes of a blob for the compiled shape.
    pub fn blob_len(&self) -> usize {
        V::blob_len(&self.shape)
    }

    /// Takes the chunk `bytes` at byte `offset` of the blob; `sink(index, value)` gets
    /// every word after the header completed by it, in order (a parameter of an `f32`
    /// blob; a word of an int8 blob). A chunk at offset 0 starts a new blob.
    /// On any error (out-of-order chunk, bad header, non-finite value, blob too long,
    /// or an error from the sink) the blob is abandoned.
    pub fn feed<F>(&mut self, offset: u32, bytes: &[u8], mut sink: F) -> Result<(), ErrorCode>
    where
        F: FnMut(usize, V::Value) -> Result<(), ErrorCode>,
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
        F: FnMut(usize, V::Value) -> Result<(), ErrorCode>,
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
            if at < V::HEADER_LEN {
                if let Some(h) = self.header.get_mut(at) {
                    *h = b;
                }
                self.received += 1;
                if self.received == V::HEADER_LEN {
                    self.check_header()?;
                }
            } else if at < values_end {
                let k = (at - V::HEADER_LEN) % 4;
                self.word[k] = b;
                self.received += 1;
                if k == 3 {
                    let index = (at - V::HEADER_LEN) / 4;
                    sink(index, V::value(&self.shape, index, self.word)?)?;
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
        let mine = V::header(&self.shape);
        if h[..4] != mine[..4] {
            return Err(ErrorCode::BadMagic);
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != V::VERSION {
            return Err(ErrorCode::UnsupportedVersion(version));
        }
        // Header length, flags, kind codes.
        if h[6..12] != mine[6..12] || h[12..15].iter().any(|&c| c > 1) {
            return Err(ErrorCode::BadHeader);
        }
        if h.get(..V::HEADER_LEN) != mine.get(..V::HEADER_LEN) {
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
