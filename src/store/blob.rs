//! The versioned weight blob: one model's architecture and parameters as bytes, for the
//! wire, for flash and for files.
//!
//! Everything is little-endian and parsed in place, without allocation; the parser never
//! panics and returns a typed [`BlobError`] for every malformed field.
//!
//! # Layout (format version 1)
//!
//! | offset | size | field | version 1 rule |
//! |---:|---:|---|---|
//! | 0 | 4 | magic | `b"HVAE"` ([`MAGIC`]) |
//! | 4 | 2 | format version, `u16` | `1` ([`VERSION`]) |
//! | 6 | 2 | header length, `u16` | `48` ([`HEADER_LEN`]); the offset of the first parameter |
//! | 8 | 4 | flags, `u32` | `0`: reserved, see below |
//! | 12 | 1 | posterior code, `u8` | `0` von Mises-Fisher, `1` Power Spherical |
//! | 13 | 1 | likelihood code, `u8` | `0` Gaussian, `1` Bernoulli |
//! | 14 | 1 | activation code, `u8` | `0` ReLU, `1` tanh |
//! | 15 | 1 | depth `L`, `u8` | `1..=4` hidden layers |
//! | 16 | 4 | input size `D`, `u32` | `>= 1` |
//! | 20 | 16 | hidden widths `h_1..h_4`, `4 x u32` | `h_1..h_L >= 1`, unused slots `0` |
//! | 36 | 4 | latent size `M`, `u32` | `2..=64` |
//! | 40 | 4 | clusters `K`, `u32` | `1..=255` |
//! | 44 | 4 | parameter count `P`, `u32` | [`Shape::param_len`] of the sizes above |
//! | 48 | `4 P` | parameters, `P x f32` | finite; in [`Shape`] layout order (normalisation offset and scale first) |
//! | `48 + 4 P` | 4 | CRC-32, `u32` | CRC-32/ISO-HDLC of bytes `0 .. 48 + 4 P` |
//!
//! The whole blob is [`blob_len`] bytes, a `const fn`, so a device can reserve a
//! `[u8; blob_len(&SHAPE)]` at compile time. Every multi-byte field sits at a multiple
//! of its own size and the parameters start 4-aligned, so a blob in flash can also be
//! inspected with a debugger without shuffling bytes.
//!
//! The CRC is the one zlib, PNG and Ethernet use (`crc32(b"123456789") == 0xCBF4_3926`),
//! so `zlib.crc32(blob[:-4])` on the host checks a blob without this crate.
//!
//! **Growing version 1.** `flags` is reserved: a version-1 writer stores `0` and a
//! version-1 reader rejects any set bit ([`BlobError::UnsupportedFlags`]). A later
//! revision can define a bit for an additive feature (and grow the header, which is why
//! the header carries its own length); older readers then fail loudly on that blob
//! instead of misreading it. A change to the meaning of existing fields bumps
//! [`VERSION`].
//!
//! # The int8 variant (format version 2)
//!
//! The parameters of a [`QuantModel`] (see [`crate::infer::quant`] for what each vector
//! holds), written by [`write_int8`] and read by [`read_int8_shape`] and
//! [`read_int8`]. The header is version 1's up to offset 44, then three counts:
//!
//! | offset | size | field | version 2 rule |
//! |---:|---:|---|---|
//! | 0 | 4 | magic | `b"HVAE"` |
//! | 4 | 2 | format version, `u16` | `2` ([`VERSION_INT8`]) |
//! | 6 | 2 | header length, `u16` | `56` ([`HEADER_LEN_INT8`]) |
//! | 8 .. 44 | 36 | flags, kinds, sizes | as version 1; the activation must be ReLU |
//! | 44 | 4 | weight count `W`, `u32` | [`quant::weight_len`] of the sizes |
//! | 48 | 4 | int count `I`, `u32` | [`quant::int_len`] |
//! | 52 | 4 | float count `F`, `u32` | [`quant::float_len`] |
//! | 56 | `W` | weights, `i8` | `-127..=127` |
//! | `56 + W` | `pad` | zero bytes to the next multiple of 4 | `0` |
//! | | `4 I` | channels and direction biases, `i32` | multiplier `>= 0`, shift `1..=62`, biases within [`quant::MAX_BIAS`] |
//! | | `4 F` | reals, `f32` | finite; scales positive |
//! | end - 4 | 4 | CRC-32, `u32` | of every byte before it |
//!
//! The checks run in version 1's order (the counts frame the blob as the parameter
//! count does), then the padding ([`BlobError::BadPadding`]) and the values
//! ([`BlobError::Int8`], the checks of [`QuantModel::new`]). A version-1 reader refuses a
//! version-2 blob and the version-2 functions refuse a version-1 blob
//! ([`BlobError::UnsupportedVersion`]). [`int8_blob_len`] is a `const fn`.
//!
//! # Scalar types
//!
//! Parameters are always stored as `f32`. Writing `f32` and reading it back is bit-exact
//! (the bytes are copied, never computed on, so `-0.0` and subnormals survive). Writing
//! `f64` rounds each value to the nearest `f32` (ties to even); a value whose rounding
//! overflows to infinity is rejected as [`BlobError::NonFinite`] rather than silently
//! stored as `inf`. Reading into `f64` widens exactly, so an `f64` round trip returns
//! `x as f32 as f64`.
//!
//! # Check order
//!
//! The parser checks in this order and stops at the first failure, so each kind of damage
//! gets its own error:
//!
//! 1. magic ([`BlobError::BadMagic`]), version ([`BlobError::UnsupportedVersion`]),
//!    header length ([`BlobError::BadHeaderLength`]): each as soon as its bytes are
//!    present, so that "not a blob" or "a newer blob" wins over "too short";
//! 2. the whole header is present ([`BlobError::Truncated`]);
//! 3. total length against the header's parameter count: if the count itself disagrees
//!    with the sizes in the header it is the count that is wrong
//!    ([`BlobError::ParamCount`]), otherwise the blob was cut short
//!    ([`BlobError::Truncated`]) or has extra bytes ([`BlobError::TrailingBytes`]);
//! 4. CRC ([`BlobError::BadCrc`]): checked *before* the meaning of any field, so random
//!    damage (a flipped bit in transit or in flash) reads as damage;
//! 5. flags ([`BlobError::UnsupportedFlags`]), kind codes ([`BlobError::UnknownKind`]),
//!    sizes ([`BlobError::BadShape`]): these fail only for an intact blob that this
//!    reader does not accept;
//! 6. [`read_params`] only: the sizes and kinds against the compiled model
//!    ([`BlobError::ShapeMismatch`]);
//! 7. parameter count against the sizes ([`BlobError::ParamCount`]), and in
//!    [`read_params`] against the destination slice;
//! 8. [`read_params`] only: every value finite ([`BlobError::NonFinite`]), and only then
//!    are the parameters copied out, so a failed load leaves the old weights in place.
//!
//! ```
//! use hvae::store::blob;
//! use hvae::shape::Shape;
//!
//! const SHAPE: Shape = Shape::new(4, &[3], 2, 2).checked();
//! let params = [0.25f32; SHAPE.param_len()];
//! let mut bytes = [0u8; blob::blob_len(&SHAPE)];
//! let n = blob::write(&SHAPE, &params, &mut bytes)?;
//! assert_eq!(n, bytes.len());
//!
//! assert_eq!(blob::read_shape(&bytes)?, SHAPE);
//! let mut loaded = [0.0f32; SHAPE.param_len()];
//! let crc = blob::read_params(&bytes, &SHAPE, &mut loaded)?;
//! assert_eq!(loaded, params);
//! assert_eq!(crc, blob::crc32(&bytes[..n - 4]));
//! # Ok::<(), blob::BlobError>(())
//! ```

use crate::infer::quant::{self, QuantError, QuantModel};
use crate::real::Real;
use crate::shape::{Activation, Likelihood, Posterior, Shape, ShapeError, MAX_HIDDEN};

/// First four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"HVAE";

/// Format version this module writes and the only one it reads.
pub const VERSION: u16 = 1;

/// Bytes before the first parameter (the header length field of a version-1 blob).
pub const HEADER_LEN: usize = 48;

/// Format version of the int8 variant ([`write_int8`], [`read_int8`]). A version-1
/// reader refuses it ([`BlobError::UnsupportedVersion`]`(2)`), and the version-1
/// functions here do too: an int8 blob is never misread as `f32` parameters.
pub const VERSION_INT8: u16 = 2;

/// Bytes before the int8 weights (the header length field of a version-2 blob).
pub const HEADER_LEN_INT8: usize = 56;

/// Bytes of the CRC trailer.
const CRC_LEN: usize = 4;

/// Bytes per stored parameter (`f32`).
const VALUE_LEN: usize = 4;

// The header lengths travel as a u16, and the parameters start 4-aligned.
const _: () = assert!(HEADER_LEN <= u16::MAX as usize && HEADER_LEN.is_multiple_of(4));
const _: () = assert!(HEADER_LEN_INT8 <= u16::MAX as usize && HEADER_LEN_INT8 > HEADER_LEN);

/// CRC-32/ISO-HDLC with a 1 KiB lookup table. A `static` so the table is in flash once,
/// not copied to the stack at each use as a `const` might be.
static CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Why a blob could not be written or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BlobError {
    /// The first four bytes are not [`MAGIC`]: not a weight blob.
    #[error("not an hvae weight blob (bad magic)")]
    BadMagic,
    /// A format version this reader does not understand.
    #[error("unsupported weight blob version {0} (expected {VERSION})")]
    UnsupportedVersion(u16),
    /// The header length field is not [`HEADER_LEN`].
    #[error("weight blob header length is not {HEADER_LEN}")]
    BadHeaderLength,
    /// Flag bits this reader does not know are set (a newer writer's feature).
    #[error("weight blob uses unsupported flags {0:#010x}")]
    UnsupportedFlags(u32),
    /// A posterior, likelihood or activation code outside the known ones.
    #[error("unknown posterior, likelihood or activation code")]
    UnknownKind,
    /// The sizes in the header (or the shape given to [`write()`]) are not a valid model.
    #[error("invalid model shape: {0}")]
    BadShape(ShapeError),
    /// A valid model, but not the one the caller was compiled for.
    #[error("weight blob is for a different model shape")]
    ShapeMismatch,
    /// The blob ends before the header or the parameters it announces do.
    #[error("weight blob is truncated")]
    Truncated,
    /// The blob goes on after its CRC trailer.
    #[error("weight blob has trailing bytes")]
    TrailingBytes,
    /// The CRC trailer does not match the bytes: the blob is damaged.
    #[error("weight blob CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC stored in the trailer.
        stored: u32,
        /// CRC of the bytes actually present.
        computed: u32,
    },
    /// Parameter `index` (in layout order) is NaN or infinite, or an `f64` that
    /// overflows `f32`.
    #[error("parameter {index} is not finite")]
    NonFinite {
        /// Index in the flat parameter vector.
        index: u32,
    },
    /// The output buffer of [`write()`] is shorter than [`blob_len`].
    #[error("output buffer too small for the blob")]
    BufferTooSmall,
    /// A parameter count disagrees with the shape: the blob's count field, or the length
    /// of the caller's parameter slice; also a shape with more than `u32::MAX` parameters.
    #[error("parameter count does not match the shape")]
    ParamCount,
    /// An int8 blob ([`VERSION_INT8`]) whose values an int8 model refuses (a weight of
    /// `-128`, a shift outside `1..=62`, a non-finite or non-positive scale, ...; the
    /// index is in the vector the [`QuantError`] names), or a model that has no int8 form
    /// (not ReLU).
    #[error("int8 weight blob: {0}")]
    Int8(QuantError),
    /// The padding after an int8 blob's weights is not zero.
    #[error("int8 weight blob padding is not zero")]
    BadPadding,
}

/// CRC-32/ISO-HDLC (zlib's `crc32`) of `bytes`: the trailer of a blob is `crc32` of
/// everything before it, and [`read_params`] returns it as the weights' identity.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC.checksum(bytes)
}

/// Total size in bytes of the blob for `shape`: header, `4 * param_len` bytes of
/// parameters, CRC trailer.
///
/// A `const fn`, so a device sizes its buffer at compile time. It never overflows: a
/// shape too large to represent gives `usize::MAX`, which no buffer satisfies. For an
/// invalid shape the value means nothing; [`write()`] rejects such a shape.
pub const fn blob_len(shape: &Shape) -> usize {
    match checked_param_len(shape) {
        Some(p) => p
            .saturating_mul(VALUE_LEN)
            .saturating_add(HEADER_LEN + CRC_LEN),
        None => usize::MAX,
    }
}

/// Writes the blob for `shape` and `params` (in [`Shape`] layout order) to the start of
/// `out` and returns the number of bytes written ([`blob_len`]).
///
/// `params.len()` must be `shape.param_len()` ([`BlobError::ParamCount`]) and every value
/// must be finite once rounded to `f32` ([`BlobError::NonFinite`]). Everything is checked
/// before the first byte is written, so on error `out` is untouched.
pub fn write<T: Real>(shape: &Shape, params: &[T], out: &mut [u8]) -> Result<usize, BlobError> {
    shape.validate().map_err(BlobError::BadShape)?;
    // Counted with checked arithmetic: on the host a shape can be arbitrarily large.
    let count = checked_param_len(shape)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or(BlobError::ParamCount)?;
    if usize::try_from(count).ok() != Some(params.len()) {
        return Err(BlobError::ParamCount);
    }
    let total = blob_len(shape);
    let out = out.get_mut(..total).ok_or(BlobError::BufferTooSmall)?;
    // Check the values against what will be stored (f32), so an f64 that overflows f32
    // is caught here and the reader never sees an infinity.
    if let Some(i) = params.iter().position(|x| !x.to_f32().is_finite()) {
        return Err(BlobError::NonFinite {
            index: u32::try_from(i).unwrap_or(u32::MAX),
        });
    }

    let (body, trailer) = out
        .split_last_chunk_mut::<CRC_LEN>()
        .ok_or(BlobError::BufferTooSmall)?;
    let mut w = Writer { rest: body };
    w.put(blob_header(shape))?;
    for x in params {
        w.put(x.to_f32().to_le_bytes())?;
    }
    if !w.rest.is_empty() {
        // Unreachable while `blob_len` and the header above agree; an error, not a panic.
        return Err(BlobError::BufferTooSmall);
    }
    *trailer = crc32(body).to_le_bytes();
    Ok(total)
}

/// The first [`HEADER_LEN`] bytes of every weight blob of `shape` (format version
/// [`VERSION`]): what [`write()`] puts before the parameters. A `const fn`, so
/// a device can check the CRC of compiled-in weights against the blob's without the
/// blob. Sizes that do not fit the header's fields are stored saturated; such a shape
/// has no blob.
pub const fn blob_header(shape: &Shape) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = MAGIC[0];
    h[1] = MAGIC[1];
    h[2] = MAGIC[2];
    h[3] = MAGIC[3];
    put_u16(&mut h, 4, VERSION);
    put_u16(&mut h, 6, HEADER_LEN as u16);
    // 8..12: flags, none in version 1.
    h[12] = posterior_code(shape.posterior);
    h[13] = likelihood_code(shape.likelihood);
    h[14] = activation_code(shape.activation);
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

/// The first [`HEADER_LEN_INT8`] bytes of every int8 weight blob of `shape`
/// (format version [`VERSION_INT8`]): what [`write_int8`] puts before the
/// int8 weights. Version 1's header with the version and header length of the int8
/// variant and, from offset 44, the three counts (weights, ints, floats; saturated as
/// [`blob_header`]'s sizes are).
pub const fn int8_blob_header(shape: &Shape) -> [u8; HEADER_LEN_INT8] {
    let v1 = blob_header(shape);
    let mut h = [0u8; HEADER_LEN_INT8];
    let mut i = 0;
    while i < 44 {
        h[i] = v1[i];
        i += 1;
    }
    put_u16(&mut h, 4, VERSION_INT8);
    put_u16(&mut h, 6, HEADER_LEN_INT8 as u16);
    put(&mut h, 44, quant::weight_len(shape));
    put(&mut h, 48, quant::int_len(shape));
    put(&mut h, 52, quant::float_len(shape));
    h
}

/// Writes `v` at `at` of a header, a little-endian `u16`.
const fn put_u16<const N: usize>(h: &mut [u8; N], at: usize, v: u16) {
    let b = v.to_le_bytes();
    h[at] = b[0];
    h[at + 1] = b[1];
}

/// Writes the size `v` at `at` of a header, a little-endian `u32`, saturated.
const fn put<const N: usize>(h: &mut [u8; N], at: usize, v: usize) {
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

/// Total size in bytes of the int8 blob of `shape`: header, the weights padded to a
/// multiple of four bytes, four bytes per int and per float, CRC trailer. A `const fn`
/// (`usize::MAX` for a shape too large to represent), as [`blob_len`].
pub const fn int8_blob_len(shape: &Shape) -> usize {
    let payload = match checked_int8_lens(shape) {
        Some(c) => Variant::Int8.payload(c),
        None => None,
    };
    match payload {
        Some(p) => p.saturating_add(HEADER_LEN_INT8 + CRC_LEN),
        None => usize::MAX,
    }
}

/// Writes the int8 blob of `model` to the start of `out` and returns the number of bytes
/// written ([`int8_blob_len`]). The model's values were checked when it was made; on
/// error `out` is untouched.
pub fn write_int8<W, I, F>(model: &QuantModel<W, I, F>, out: &mut [u8]) -> Result<usize, BlobError>
where
    W: AsRef<[i8]>,
    I: AsRef<[i32]>,
    F: AsRef<[f32]>,
{
    let shape = model.shape();
    shape.validate().map_err(BlobError::BadShape)?;
    let counts = checked_int8_lens(shape).ok_or(BlobError::ParamCount)?;
    let [c0, c1, c2] = counts.map(u32::try_from);
    let counts = [c0, c1, c2].map(|c| c.unwrap_or(u32::MAX));
    if counts.contains(&u32::MAX) {
        return Err(BlobError::ParamCount);
    }
    let total = int8_blob_len(shape);
    let out = out.get_mut(..total).ok_or(BlobError::BufferTooSmall)?;
    let (body, trailer) = out
        .split_last_chunk_mut::<CRC_LEN>()
        .ok_or(BlobError::BufferTooSmall)?;
    let mut w = Writer { rest: body };
    w.put(int8_blob_header(shape))?;
    for &v in model.weights() {
        w.put(v.to_le_bytes())?;
    }
    for _ in 0..model.weights().len().next_multiple_of(4) - model.weights().len() {
        w.put([0u8])?;
    }
    for &v in model.ints() {
        w.put(v.to_le_bytes())?;
    }
    for &v in model.floats() {
        w.put(v.to_le_bytes())?;
    }
    if !w.rest.is_empty() {
        return Err(BlobError::BufferTooSmall);
    }
    *trailer = crc32(body).to_le_bytes();
    Ok(total)
}

/// [`read_shape`] of an int8 blob ([`VERSION_INT8`]): header, length and CRC checked,
/// the values not yet.
pub fn read_int8_shape(bytes: &[u8]) -> Result<Shape, BlobError> {
    parse(bytes, None, Variant::Int8).map(|b| b.shape)
}

/// Loads an int8 blob written for `expected` into the three vectors of a
/// [`QuantModel`] ([`quant::weight_len`], [`quant::int_len`], [`quant::float_len`] long;
/// [`BlobError::ParamCount`] otherwise) and returns the blob's CRC.
///
/// The checks of [`read_params`], in the same order, then the padding
/// ([`BlobError::BadPadding`]) and every value as [`QuantModel::new`] checks it
/// ([`BlobError::Int8`]); all or nothing, so on error the vectors are untouched.
pub fn read_int8(
    bytes: &[u8],
    expected: &Shape,
    weights: &mut [i8],
    ints: &mut [i32],
    floats: &mut [f32],
) -> Result<u32, BlobError> {
    let blob = parse(bytes, Some(expected), Variant::Int8)?;
    let shape = blob.shape;
    let (nw, ni, nf) = (weights.len(), ints.len(), floats.len());
    if nw != quant::weight_len(&shape)
        || ni != quant::int_len(&shape)
        || nf != quant::float_len(&shape)
    {
        return Err(BlobError::ParamCount);
    }
    let (w, rest) = blob
        .values
        .split_at_checked(nw)
        .ok_or(BlobError::Truncated)?;
    let (pad, rest) = rest
        .split_at_checked(nw.next_multiple_of(4) - nw)
        .ok_or(BlobError::Truncated)?;
    if pad.iter().any(|&b| b != 0) {
        return Err(BlobError::BadPadding);
    }
    let (words, tail) = rest.as_chunks::<4>();
    let (iw, fw) = words.split_at_checked(ni).ok_or(BlobError::Truncated)?;
    if fw.len() != nf || !tail.is_empty() {
        return Err(BlobError::ParamCount);
    }
    let wi = || w.iter().map(|&b| i8::from_le_bytes([b]));
    let ii = || iw.iter().map(|b| i32::from_le_bytes(*b));
    let fi = || fw.iter().map(|b| f32::from_le_bytes(*b));
    quant::check_values(&shape, wi(), ii(), fi()).map_err(BlobError::Int8)?;
    for (d, v) in weights.iter_mut().zip(wi()) {
        *d = v;
    }
    for (d, v) in ints.iter_mut().zip(ii()) {
        *d = v;
    }
    for (d, v) in floats.iter_mut().zip(fi()) {
        *d = v;
    }
    Ok(blob.crc)
}

/// [`quant::weight_len`], [`quant::int_len`] and [`quant::float_len`] with checked
/// arithmetic (sizes read from untrusted bytes), `None` on overflow; a unit test pins
/// them equal.
const fn checked_int8_lens(s: &Shape) -> Option<[usize; 3]> {
    let mut w = Some(0usize);
    let mut hs = Some(0usize);
    let mut l = 0;
    while l < s.depth() {
        let (o, i) = s.encoder_layer(l);
        w = match (w, o.checked_mul(i)) {
            (Some(a), Some(b)) => a.checked_add(b),
            _ => None,
        };
        hs = match hs {
            Some(a) => a.checked_add(o),
            None => None,
        };
        l += 1;
    }
    let (Some(w), Some(hs)) = (w, hs) else {
        return None;
    };
    let h = s.last_hidden();
    let Some(mu) = s.latent.checked_mul(h) else {
        return None;
    };
    let Some(w) = w.checked_add(mu) else {
        return None;
    };
    // A tanh model's tables (depth is at most MAX_HIDDEN: no overflow).
    let Some(w) = w.checked_add(quant::table_len(s)) else {
        return None;
    };
    let Some(ints) = hs.checked_mul(3) else {
        return None;
    };
    let Some(ints) = ints.checked_add(s.latent) else {
        return None;
    };
    // 3 D + 2 sum h + M + h_L + 1 + K M + 1 + K; M and K are small.
    let Some(d3) = s.input.checked_mul(3) else {
        return None;
    };
    let small = s.latent + 1 + s.clusters * s.latent + 1 + s.clusters;
    let floats = match d3.checked_add(hs) {
        Some(a) => match a.checked_add(hs) {
            Some(b) => match b.checked_add(h) {
                Some(c) => c.checked_add(small),
                None => None,
            },
            None => None,
        },
        None => None,
    };
    match floats {
        Some(f) => Some([w, ints, f]),
        None => None,
    }
}

/// Reads and validates a blob's header, total length and CRC, and returns the shape it
/// describes, so the host can learn the sizes before allocating. The parameter values
/// are not inspected ([`read_params`] does that).
pub fn read_shape(bytes: &[u8]) -> Result<Shape, BlobError> {
    parse(bytes, None, Variant::F32).map(|b| b.shape)
}

/// Loads the parameters of a blob written for `expected` into `params` and returns the
/// blob's CRC (the identity of the weights a device reports).
///
/// Everything is validated first, in the order given in the [module docs](self): magic,
/// version, header, length, CRC, kind codes and sizes, the shape against `expected`
/// ([`BlobError::ShapeMismatch`]), `params.len()` against it ([`BlobError::ParamCount`])
/// and every value finite. All or nothing: on error `params` is untouched, so a device
/// that fails to load new weights keeps running on the old ones.
pub fn read_params<T: Real>(
    bytes: &[u8],
    expected: &Shape,
    params: &mut [T],
) -> Result<u32, BlobError> {
    let blob = parse(bytes, Some(expected), Variant::F32)?;
    let (values, rest) = blob.values.as_chunks::<VALUE_LEN>();
    if values.len() != params.len() || !rest.is_empty() {
        return Err(BlobError::ParamCount);
    }
    // First pass only looks, so a NaN at the very end cannot leave a half-loaded model.
    if let Some(i) = values
        .iter()
        .position(|v| !f32::from_le_bytes(*v).is_finite())
    {
        return Err(BlobError::NonFinite {
            index: u32::try_from(i).unwrap_or(u32::MAX),
        });
    }
    for (p, v) in params.iter_mut().zip(values) {
        *p = T::of_f32(f32::from_le_bytes(*v));
    }
    Ok(blob.crc)
}

/// A blob that passed every check except the per-value ones.
struct Parsed<'a> {
    shape: Shape,
    /// The parameter bytes (version 1: `4 P`; version 2: the weights, their padding, the
    /// ints and the floats).
    values: &'a [u8],
    crc: u32,
}

/// The two variants of the format.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Version 1: `f32` parameters.
    F32,
    /// Version 2: int8 weights, `i32` channels, `f32` reals.
    Int8,
}

impl Variant {
    const fn version(self) -> u16 {
        match self {
            Variant::F32 => VERSION,
            Variant::Int8 => VERSION_INT8,
        }
    }
    const fn header_len(self) -> usize {
        match self {
            Variant::F32 => HEADER_LEN,
            Variant::Int8 => HEADER_LEN_INT8,
        }
    }
    /// The count fields a shape implies (version 1 uses the first), `None` on overflow.
    const fn counts(self, s: &Shape) -> Option<[usize; 3]> {
        match self {
            Variant::F32 => match checked_param_len(s) {
                Some(p) => Some([p, 0, 0]),
                None => None,
            },
            Variant::Int8 => checked_int8_lens(s),
        }
    }
    /// Payload bytes of the count fields, `None` on overflow.
    const fn payload(self, [a, b, c]: [usize; 3]) -> Option<usize> {
        match self {
            Variant::F32 => a.checked_mul(VALUE_LEN),
            Variant::Int8 => match (a.checked_next_multiple_of(4), b.checked_add(c)) {
                (Some(w), Some(n)) => match n.checked_mul(4) {
                    Some(n) => w.checked_add(n),
                    None => None,
                },
                _ => None,
            },
        }
    }
}

/// The fixed-layout header fields after the preamble, decoded but not yet judged.
struct RawHeader {
    flags: u32,
    posterior: u8,
    likelihood: u8,
    activation: u8,
    depth: u8,
    input: u32,
    hidden: [u32; MAX_HIDDEN],
    latent: u32,
    clusters: u32,
    /// Version 1: the parameter count; version 2: weights, ints, floats.
    counts: [u32; 3],
}

/// Every check but the per-value ones, in the documented order.
fn parse<'a>(
    bytes: &'a [u8],
    expected: Option<&Shape>,
    variant: Variant,
) -> Result<Parsed<'a>, BlobError> {
    let mut r = Reader { rest: bytes };
    // 1. Preamble, each field judged as soon as it is there.
    if r.take::<4>()? != MAGIC {
        return Err(BlobError::BadMagic);
    }
    let version = r.u16()?;
    if version != variant.version() {
        return Err(BlobError::UnsupportedVersion(version));
    }
    let header_len = variant.header_len();
    if usize::from(r.u16()?) != header_len {
        return Err(BlobError::BadHeaderLength);
    }
    // 2. The rest of the header (Truncated if it is not all there).
    let raw = RawHeader {
        flags: r.u32()?,
        posterior: r.u8()?,
        likelihood: r.u8()?,
        activation: r.u8()?,
        depth: r.u8()?,
        input: r.u32()?,
        hidden: [r.u32()?, r.u32()?, r.u32()?, r.u32()?],
        latent: r.u32()?,
        clusters: r.u32()?,
        counts: match variant {
            Variant::F32 => [r.u32()?, 0, 0],
            Variant::Int8 => [r.u32()?, r.u32()?, r.u32()?],
        },
    };

    // 3. Length. The count fields frame the blob; when the length disagrees, look at the
    // sizes (not yet trusted: only used to pick the error) to tell a corrupted count from
    // a truncated or padded blob.
    let [c0, c1, c2] = raw.counts.map(|c| usize::try_from(c).ok());
    let count = match (c0, c1, c2) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    let want = count
        .and_then(|c| variant.payload(c))
        .and_then(|n| n.checked_add(header_len + CRC_LEN));
    if want != Some(bytes.len()) {
        let implied = sizes(&raw).ok().and_then(|s| variant.counts(&s));
        if implied.is_some() && implied != count {
            return Err(BlobError::ParamCount);
        }
        return Err(match want {
            Some(n) if bytes.len() > n => BlobError::TrailingBytes,
            _ => BlobError::Truncated,
        });
    }

    // 4. CRC over everything before the trailer.
    let (body, trailer) = bytes
        .split_last_chunk::<CRC_LEN>()
        .ok_or(BlobError::Truncated)?;
    let stored = u32::from_le_bytes(*trailer);
    let computed = crc32(body);
    if stored != computed {
        return Err(BlobError::BadCrc { stored, computed });
    }

    // 5. Meaning of the fields of an intact blob.
    if raw.flags != 0 {
        return Err(BlobError::UnsupportedFlags(raw.flags));
    }
    let posterior = match raw.posterior {
        0 => Posterior::VonMisesFisher,
        1 => Posterior::PowerSpherical,
        _ => return Err(BlobError::UnknownKind),
    };
    let likelihood = match raw.likelihood {
        0 => Likelihood::Gaussian,
        1 => Likelihood::Bernoulli,
        _ => return Err(BlobError::UnknownKind),
    };
    let activation = match raw.activation {
        0 => Activation::Relu,
        1 => Activation::Tanh,
        _ => return Err(BlobError::UnknownKind),
    };
    let shape = sizes(&raw)
        .map_err(BlobError::BadShape)?
        .with_posterior(posterior)
        .with_likelihood(likelihood)
        .with_activation(activation);

    // 6. Before the count, so a blob for another (valid) model says so.
    if expected.is_some_and(|e| *e != shape) {
        return Err(BlobError::ShapeMismatch);
    }

    // 7. The counts must be the ones the sizes imply.
    if variant.counts(&shape) != count {
        return Err(BlobError::ParamCount);
    }

    let values = body.get(header_len..).ok_or(BlobError::Truncated)?;
    Ok(Parsed {
        shape,
        values,
        crc: computed,
    })
}

/// The sizes of a header as a validated [`Shape`] with default kinds.
fn sizes(raw: &RawHeader) -> Result<Shape, ShapeError> {
    let depth = usize::from(raw.depth);
    // Sizes that do not fit a usize (16-bit targets only) could never be allocated.
    let size = |x: u32| usize::try_from(x).map_err(|_| ShapeError::BadHidden);
    let mut hidden = [0usize; MAX_HIDDEN];
    for (l, (h, &stored)) in hidden.iter_mut().zip(&raw.hidden).enumerate() {
        *h = size(stored)?;
        // Unused slots must be zero: the writer stores zero, so anything else is damage
        // or a feature this reader does not know, not a value to ignore.
        if l >= depth && stored != 0 {
            return Err(ShapeError::BadHidden);
        }
    }
    let used = hidden.get(..depth).ok_or(ShapeError::BadHidden)?;
    let input = usize::try_from(raw.input).map_err(|_| ShapeError::NoInput)?;
    let latent = usize::try_from(raw.latent).map_err(|_| ShapeError::BadLatent)?;
    let clusters = usize::try_from(raw.clusters).map_err(|_| ShapeError::BadClusters)?;
    let shape = Shape::new(input, used, latent, clusters);
    shape.validate()?;
    Ok(shape)
}

/// [`Shape::param_len`] with checked arithmetic, `None` on overflow.
///
/// Shape's own sum uses plain `*` and `+`, which is right for compiled shapes but not for
/// sizes read from untrusted bytes (a `u32::MAX` input would overflow a 32-bit `usize`).
/// It follows the same table term by term; a unit test pins the two equal.
const fn checked_param_len(s: &Shape) -> Option<usize> {
    /// `acc + out * inp + out`: one weight matrix and its bias.
    const fn layer(acc: Option<usize>, out: usize, inp: usize) -> Option<usize> {
        match (acc, out.checked_mul(inp)) {
            (Some(a), Some(w)) => match a.checked_add(w) {
                Some(b) => b.checked_add(out),
                None => None,
            },
            _ => None,
        }
    }
    let mut n = Some(0usize);
    // Encoder hidden layers.
    let mut l = 0;
    while l < s.depth() {
        let (o, i) = s.encoder_layer(l);
        n = layer(n, o, i);
        l += 1;
    }
    let h = s.last_hidden();
    // Direction head `M x h_L + M`, concentration head `1 x h_L + 1`.
    n = layer(n, s.latent, h);
    n = layer(n, 1, h);
    // Segmenter: centres `K x M`, mixing weights `K` (as a "bias"), then `ln kappa_s`.
    n = layer(n, s.clusters, s.latent);
    n = layer(n, 1, 0);
    // Decoder layers, latent to output.
    let mut l = 0;
    while l <= s.depth() {
        let (o, i) = s.decoder_layer(l);
        n = layer(n, o, i);
        l += 1;
    }
    // Normalisation offset and scale: `D x 1 + D`.
    layer(n, s.input, 1)
}

/// A posterior's code in the header (`0` von Mises-Fisher, `1` Power Spherical).
pub const fn posterior_code(p: Posterior) -> u8 {
    match p {
        Posterior::VonMisesFisher => 0,
        Posterior::PowerSpherical => 1,
    }
}

/// A likelihood's code in the header (`0` Gaussian, `1` Bernoulli).
pub const fn likelihood_code(l: Likelihood) -> u8 {
    match l {
        Likelihood::Gaussian => 0,
        Likelihood::Bernoulli => 1,
    }
}

/// An activation's code in the header (`0` ReLU, `1` tanh).
pub const fn activation_code(a: Activation) -> u8 {
    match a {
        Activation::Relu => 0,
        Activation::Tanh => 1,
    }
}

/// Sequential little-endian reads; running out of bytes is [`BlobError::Truncated`].
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BlobError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(BlobError::Truncated)?;
        self.rest = tail;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, BlobError> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Result<u16, BlobError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, BlobError> {
        self.take().map(u32::from_le_bytes)
    }
}

/// Sequential writes; running out of room is [`BlobError::BufferTooSmall`] (never hit
/// after [`write()`]'s length check, but an error is cheaper to reason about than a panic).
struct Writer<'a> {
    rest: &'a mut [u8],
}

impl Writer<'_> {
    fn put<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), BlobError> {
        let rest = core::mem::take(&mut self.rest);
        let (head, tail) = rest
            .split_first_chunk_mut::<N>()
            .ok_or(BlobError::BufferTooSmall)?;
        *head = bytes;
        self.rest = tail;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::TEST_SHAPES;

    #[test]
    fn crc_is_zlib_crc32() {
        // The CRC catalogue's check value for CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// A larger shape: three hidden layers, 64 latent dimensions, 255 clusters.
    const BIG: Shape = Shape::new(100, &[50, 20, 10], 64, 255);

    #[test]
    fn checked_param_len_matches_shape() {
        let small_and_big = [Shape::new(1, &[1], 2, 1), BIG];
        for s in TEST_SHAPES.into_iter().chain(small_and_big) {
            assert_eq!(checked_param_len(&s), Some(s.param_len()), "{s:?}");
            assert_eq!(blob_len(&s), HEADER_LEN + 4 * s.param_len() + CRC_LEN);
        }
    }

    #[test]
    fn checked_int8_lens_match_the_model() {
        let relu = TEST_SHAPES.into_iter().chain([BIG]);
        let tanh = relu.clone().map(|s| s.with_activation(Activation::Tanh));
        for s in relu.chain(tanh) {
            let want = [
                quant::weight_len(&s),
                quant::int_len(&s),
                quant::float_len(&s),
            ];
            assert_eq!(checked_int8_lens(&s), Some(want), "{s:?}");
            let pad = want[0].next_multiple_of(4);
            assert_eq!(int8_blob_len(&s), 56 + pad + 4 * (want[1] + want[2]) + 4);
        }
        let huge = Shape::new(usize::MAX, &[usize::MAX], 64, 255);
        assert_eq!(checked_int8_lens(&huge), None);
        assert_eq!(int8_blob_len(&huge), usize::MAX);
    }

    #[test]
    fn checked_param_len_overflows_to_none() {
        let huge = Shape::new(usize::MAX, &[usize::MAX], 64, 255);
        assert_eq!(checked_param_len(&huge), None);
        assert_eq!(blob_len(&huge), usize::MAX);
        assert_eq!(
            write::<f32>(&huge, &[], &mut [0u8; 64]),
            Err(BlobError::ParamCount)
        );
    }

    #[test]
    fn header_fields_sit_at_the_documented_offsets() {
        let s = Shape::new(5, &[7, 3], 3, 2)
            .with_posterior(Posterior::PowerSpherical)
            .with_likelihood(Likelihood::Bernoulli)
            .with_activation(Activation::Tanh);
        let params = [1.5f32; 512];
        let p = s.param_len();
        let mut out = [0u8; 1024];
        let n = write(&s, &params[..p], &mut out).unwrap();
        let b = &out[..n];
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(&b[0..4], b"HVAE");
        assert_eq!(&b[4..6], &[1, 0]);
        assert_eq!(&b[6..8], &[48, 0]);
        assert_eq!(u32_at(8), 0);
        assert_eq!(&b[12..16], &[1, 1, 1, 2]);
        assert_eq!(u32_at(16), 5);
        assert_eq!(
            [u32_at(20), u32_at(24), u32_at(28), u32_at(32)],
            [7, 3, 0, 0]
        );
        assert_eq!(u32_at(36), 3);
        assert_eq!(u32_at(40), 2);
        assert_eq!(u32_at(44), p as u32);
        assert_eq!(&b[48..52], &1.5f32.to_le_bytes());
        assert_eq!(n, 48 + 4 * p + 4);
        assert_eq!(u32_at(n - 4), crc32(&b[..n - 4]));
    }

    #[test]
    fn blob_len_sizes_a_const_buffer() {
        const S: Shape = Shape::new(3, &[2], 2, 1).checked();
        let buf = [0u8; blob_len(&S)];
        assert_eq!(buf.len(), 48 + 4 * S.param_len() + 4);
    }

    #[test]
    fn errors_display() {
        let e = BlobError::BadCrc {
            stored: 1,
            computed: 0xdead_beef,
        };
        assert_eq!(
            e.to_string(),
            "weight blob CRC mismatch (stored 0x00000001, computed 0xdeadbeef)"
        );
        assert!(BlobError::BadShape(ShapeError::BadLatent)
            .to_string()
            .contains("latent"));
    }
}
