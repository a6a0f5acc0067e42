//! Loading weights in chunks: the blob streamed into storage, checked as it arrives.

use super::messages::{saturate, ErrorCode};
use crate::shape::{Activation, Likelihood, Posterior, Shape, MAX_HIDDEN};
use crate::store::blob;

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

/// Streams a weight blob ([`crate::store::blob`] format) arriving in chunks, for a device that
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
