//! Weight blob: round trips, and every kind of corruption rejected with its own error and
//! without touching the destination.

use hvae::store::blob::{self, BlobError, HEADER_LEN, MAGIC, VERSION};
use hvae::ShapeError;
use hvae::{Activation, Likelihood, Posterior, Shape};

mod blob_bytes;
mod lcg;

use blob_bytes::{fix_crc, set_u32};
use lcg::Lcg;

// Header offsets, as documented in the module's layout table.
const OFF_VERSION: usize = 4;
const OFF_HEADER_LEN: usize = 6;
const OFF_FLAGS: usize = 8;
const OFF_POSTERIOR: usize = 12;
const OFF_LIKELIHOOD: usize = 13;
const OFF_ACTIVATION: usize = 14;
const OFF_DEPTH: usize = 15;
const OFF_INPUT: usize = 16;
const OFF_HIDDEN: usize = 20;
const OFF_LATENT: usize = 36;
const OFF_CLUSTERS: usize = 40;
const OFF_COUNT: usize = 44;

/// Bit pattern the destination is filled with before a read that must fail.
const SENTINEL: f32 = -12345.678;

fn digits() -> Shape {
    Shape::new(64, &[32], 8, 10)
}

fn small() -> Shape {
    Shape::new(5, &[7, 3], 3, 2)
        .with_posterior(Posterior::PowerSpherical)
        .with_likelihood(Likelihood::Bernoulli)
        .with_activation(Activation::Tanh)
}

fn deep() -> Shape {
    Shape::new(3, &[4, 5, 6, 2], 2, 1)
}

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        (self.next_u32() as usize) % n
    }
    /// Uniform in [-2, 2).
    fn value(&mut self) -> f32 {
        (self.next_u32() as f32 / 4_294_967_296.0) * 4.0 - 2.0
    }
}

/// Pseudo-random finite parameters, with awkward-but-finite values planted at the start
/// so that bit-exactness covers them too.
fn params(shape: &Shape, seed: u64) -> Vec<f32> {
    let mut rng = Lcg(seed);
    let mut p: Vec<f32> = (0..shape.param_len()).map(|_| rng.value()).collect();
    let special = [
        -0.0,
        f32::MIN_POSITIVE,
        f32::from_bits(1), // smallest subnormal
        f32::MAX,
        f32::MIN,
        1.0e-30,
    ];
    for (d, s) in p.iter_mut().zip(special) {
        *d = s;
    }
    p
}

fn blob_of(shape: &Shape, params: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; blob::blob_len(shape)];
    let n = blob::write(shape, params, &mut out).expect("write");
    assert_eq!(n, out.len());
    out
}

fn bits(p: &[f32]) -> Vec<u32> {
    p.iter().map(|x| x.to_bits()).collect()
}

/// `read_params` into a sentinel-filled buffer of `expected`'s size; the buffer must be
/// untouched when the read fails.
fn read_into_sentinel(bytes: &[u8], expected: &Shape) -> Result<Vec<f32>, BlobError> {
    let mut dst = vec![SENTINEL; expected.param_len()];
    match blob::read_params(bytes, expected, &mut dst) {
        Ok(_) => Ok(dst),
        Err(e) => {
            assert!(
                dst.iter().all(|x| x.to_bits() == SENTINEL.to_bits()),
                "params written despite {e:?}"
            );
            Err(e)
        }
    }
}

/// The blob with one header edit and a valid CRC, read back against `shape`.
fn edited(
    shape: &Shape,
    edit: impl FnOnce(&mut Vec<u8>),
) -> (Result<Shape, BlobError>, Result<Vec<f32>, BlobError>) {
    let mut b = blob_of(shape, &params(shape, 7));
    edit(&mut b);
    fix_crc(&mut b);
    (blob::read_shape(&b), read_into_sentinel(&b, shape))
}

#[test]
fn constants() {
    assert_eq!(&MAGIC, b"HVAE");
    assert_eq!(VERSION, 1);
    assert_eq!(HEADER_LEN, 48);
    for s in [digits(), small(), deep()] {
        assert_eq!(blob::blob_len(&s), 48 + 4 * s.param_len() + 4);
    }
}

#[test]
fn round_trip_f32_is_bit_exact() {
    for (i, shape) in [digits(), small(), deep()].into_iter().enumerate() {
        let p = params(&shape, 1 + i as u64);
        let b = blob_of(&shape, &p);
        assert_eq!(blob::read_shape(&b), Ok(shape));
        let mut back = vec![0.0f32; shape.param_len()];
        let crc = blob::read_params(&b, &shape, &mut back).expect("read");
        assert_eq!(bits(&back), bits(&p), "{shape:?}");
        let n = b.len();
        assert_eq!(crc, blob::crc32(&b[..n - 4]));
        assert_eq!(crc.to_le_bytes(), b[n - 4..]);
        // Writing again gives the same bytes: the format is canonical.
        assert_eq!(blob_of(&shape, &back), b);
    }
}

#[test]
fn round_trip_f64_rounds_to_f32() {
    let shape = small();
    let mut rng = Lcg(99);
    let p: Vec<f64> = (0..shape.param_len())
        .map(|_| f64::from(rng.value()) * (1.0 + 1e-9))
        .collect();
    let mut b = vec![0u8; blob::blob_len(&shape)];
    blob::write(&shape, &p, &mut b).expect("write");
    let mut back = vec![0.0f64; shape.param_len()];
    blob::read_params(&b, &shape, &mut back).expect("read");
    for (x, y) in p.iter().zip(&back) {
        assert_eq!(y.to_bits(), (*x as f32 as f64).to_bits());
    }
    // f32 readers see the same rounded values.
    let mut back32 = vec![0.0f32; shape.param_len()];
    blob::read_params(&b, &shape, &mut back32).expect("read");
    for (x, y) in p.iter().zip(&back32) {
        assert_eq!(y.to_bits(), (*x as f32).to_bits());
    }
}

#[test]
fn write_rejects_bad_input_without_touching_out() {
    let shape = small();
    let p = params(&shape, 3);
    let len = blob::blob_len(&shape);
    let fresh = || vec![0xA5u8; len + 8];

    // Every short buffer.
    for n in 0..len {
        let mut out = vec![0xA5u8; n];
        assert_eq!(
            blob::write(&shape, &p, &mut out),
            Err(BlobError::BufferTooSmall),
            "len {n}"
        );
        assert!(out.iter().all(|&x| x == 0xA5));
    }
    // A longer buffer is fine; only the prefix is written.
    let mut out = fresh();
    assert_eq!(blob::write(&shape, &p, &mut out), Ok(len));
    assert!(out[len..].iter().all(|&x| x == 0xA5));
    assert_eq!(blob::read_shape(&out[..len]), Ok(shape));

    let mut out = fresh();
    assert_eq!(
        blob::write(&shape, &p[1..], &mut out),
        Err(BlobError::ParamCount)
    );
    let mut longer = p.clone();
    longer.push(0.0);
    assert_eq!(
        blob::write(&shape, &longer, &mut out),
        Err(BlobError::ParamCount)
    );
    for (idx, bad) in [
        (0usize, f32::NAN),
        (17, f32::INFINITY),
        (p.len() - 1, f32::NEG_INFINITY),
    ] {
        let mut q = p.clone();
        q[idx] = bad;
        assert_eq!(
            blob::write(&shape, &q, &mut out),
            Err(BlobError::NonFinite { index: idx as u32 })
        );
    }
    // A finite f64 that overflows f32 would be stored as inf: rejected instead.
    let mut q: Vec<f64> = p.iter().map(|&x| f64::from(x)).collect();
    q[5] = 1e300;
    assert_eq!(
        blob::write(&shape, &q, &mut out),
        Err(BlobError::NonFinite { index: 5 })
    );
    assert_eq!(
        blob::write::<f32>(&Shape::new(3, &[2], 1, 2), &[0.0; 64], &mut out),
        Err(BlobError::BadShape(ShapeError::BadLatent))
    );
    assert!(out.iter().all(|&x| x == 0xA5));
}

#[test]
fn bad_magic() {
    for i in 0..4 {
        let (s, p) = edited(&small(), |b| b[i] ^= 0x20);
        assert_eq!(s, Err(BlobError::BadMagic));
        assert_eq!(p, Err(BlobError::BadMagic));
    }
}

#[test]
fn unsupported_version() {
    for v in [0u16, 2, 0x0100, u16::MAX] {
        let (s, p) = edited(&small(), |b| {
            b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&v.to_le_bytes())
        });
        assert_eq!(s, Err(BlobError::UnsupportedVersion(v)));
        assert_eq!(p, Err(BlobError::UnsupportedVersion(v)));
    }
}

#[test]
fn bad_header_length() {
    for h in [0u16, 44, 47, 49, 52, 0x3000, u16::MAX] {
        let (s, p) = edited(&small(), |b| {
            b[OFF_HEADER_LEN..OFF_HEADER_LEN + 2].copy_from_slice(&h.to_le_bytes())
        });
        assert_eq!(s, Err(BlobError::BadHeaderLength), "{h}");
        assert_eq!(p, Err(BlobError::BadHeaderLength), "{h}");
    }
}

#[test]
fn unsupported_flags() {
    for f in [1u32, 0x8000_0000, u32::MAX] {
        let (s, p) = edited(&small(), |b| set_u32(b, OFF_FLAGS, f));
        assert_eq!(s, Err(BlobError::UnsupportedFlags(f)));
        assert_eq!(p, Err(BlobError::UnsupportedFlags(f)));
    }
}

#[test]
fn unknown_kind_codes() {
    for off in [OFF_POSTERIOR, OFF_LIKELIHOOD, OFF_ACTIVATION] {
        for code in [2u8, 3, 0x80, 0xFF] {
            let (s, p) = edited(&small(), |b| b[off] = code);
            assert_eq!(s, Err(BlobError::UnknownKind), "offset {off} code {code}");
            assert_eq!(p, Err(BlobError::UnknownKind), "offset {off} code {code}");
        }
    }
}

#[test]
fn other_valid_kind_is_a_shape_mismatch() {
    let base = small();
    let cases = [
        (
            OFF_POSTERIOR,
            base.with_posterior(Posterior::VonMisesFisher),
        ),
        (OFF_LIKELIHOOD, base.with_likelihood(Likelihood::Gaussian)),
        (OFF_ACTIVATION, base.with_activation(Activation::Relu)),
    ];
    for (off, other) in cases {
        // `small` uses code 1 everywhere; 0 is the other valid kind.
        let (s, p) = edited(&base, |b| b[off] = 0);
        assert_eq!(s, Ok(other));
        assert_eq!(p, Err(BlobError::ShapeMismatch));
    }
}

#[test]
fn invalid_sizes_are_bad_shape() {
    use ShapeError::*;
    let cases: [(usize, u32, ShapeError); 10] = [
        (OFF_INPUT, 0, NoInput),
        (OFF_HIDDEN, 0, BadHidden),      // first hidden width zero
        (OFF_HIDDEN + 4, 0, BadHidden),  // second (used) hidden width zero
        (OFF_HIDDEN + 8, 1, BadHidden),  // unused slot not zero
        (OFF_HIDDEN + 12, 9, BadHidden), // unused slot not zero
        (OFF_LATENT, 0, BadLatent),
        (OFF_LATENT, 1, BadLatent),
        (OFF_LATENT, 65, BadLatent),
        (OFF_CLUSTERS, 0, BadClusters),
        (OFF_CLUSTERS, 256, BadClusters),
    ];
    for (off, v, e) in cases {
        let (s, p) = edited(&small(), |b| set_u32(b, off, v));
        assert_eq!(s, Err(BlobError::BadShape(e)), "offset {off} value {v}");
        assert_eq!(p, Err(BlobError::BadShape(e)), "offset {off} value {v}");
    }
    // Depth: zero, past MAX_HIDDEN, or disagreeing with the hidden widths.
    for d in [0u8, 1, 3, 4, 5, 255] {
        let (s, p) = edited(&small(), |b| b[OFF_DEPTH] = d);
        assert_eq!(s, Err(BlobError::BadShape(BadHidden)), "depth {d}");
        assert_eq!(p, Err(BlobError::BadShape(BadHidden)), "depth {d}");
    }
}

#[test]
fn other_valid_sizes_are_a_shape_mismatch() {
    // A different but valid model: the compiled model refuses it (ShapeMismatch); without
    // an expected shape the unchanged count no longer fits the sizes (ParamCount).
    let cases: [(usize, u32); 7] = [
        (OFF_INPUT, 6),
        (OFF_INPUT, u32::MAX),
        (OFF_HIDDEN, 8),
        (OFF_HIDDEN + 4, 1),
        (OFF_HIDDEN, u32::MAX),
        (OFF_LATENT, 64),
        (OFF_CLUSTERS, 255),
    ];
    for (off, v) in cases {
        let (s, p) = edited(&small(), |b| set_u32(b, off, v));
        assert_eq!(s, Err(BlobError::ParamCount), "offset {off} value {v}");
        assert_eq!(p, Err(BlobError::ShapeMismatch), "offset {off} value {v}");
    }
}

#[test]
fn param_count_field() {
    let shape = small();
    let p = shape.param_len() as u32;
    for c in [0, 1, p - 1, p + 1, 2 * p, u32::MAX / 4, u32::MAX] {
        let (s, r) = edited(&shape, |b| set_u32(b, OFF_COUNT, c));
        assert_eq!(s, Err(BlobError::ParamCount), "count {c}");
        assert_eq!(r, Err(BlobError::ParamCount), "count {c}");
    }
    // A count that frames the blob correctly (one extra value, length to match, CRC
    // fixed) but disagrees with the sizes is still caught.
    let mut b = blob_of(&shape, &params(&shape, 2));
    let n = b.len();
    b.truncate(n - 4);
    b.extend_from_slice(&0.5f32.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    set_u32(&mut b, OFF_COUNT, p + 1);
    fix_crc(&mut b);
    assert_eq!(blob::read_shape(&b), Err(BlobError::ParamCount));
    assert_eq!(read_into_sentinel(&b, &shape), Err(BlobError::ParamCount));
}

#[test]
fn truncation_at_every_length() {
    for shape in [small(), digits()] {
        let b = blob_of(&shape, &params(&shape, 4));
        for n in 0..b.len() {
            assert_eq!(blob::read_shape(&b[..n]), Err(BlobError::Truncated), "{n}");
            assert_eq!(
                read_into_sentinel(&b[..n], &shape),
                Err(BlobError::Truncated),
                "{n}"
            );
        }
    }
}

#[test]
fn trailing_bytes() {
    let shape = small();
    let b = blob_of(&shape, &params(&shape, 5));
    for extra in [1usize, 3, 4, 100] {
        let mut c = b.clone();
        c.extend(std::iter::repeat_n(0u8, extra));
        assert_eq!(blob::read_shape(&c), Err(BlobError::TrailingBytes));
        assert_eq!(
            read_into_sentinel(&c, &shape),
            Err(BlobError::TrailingBytes)
        );
        // Moving the CRC to the new end does not help.
        fix_crc(&mut c);
        assert_eq!(
            read_into_sentinel(&c, &shape),
            Err(BlobError::TrailingBytes)
        );
    }
}

/// The error a single flipped bit at `pos` (CRC not fixed) must give.
fn flip_error(pos: usize) -> fn(&BlobError) -> bool {
    match pos {
        0..4 => |e| *e == BlobError::BadMagic,
        4..6 => |e| matches!(e, BlobError::UnsupportedVersion(_)),
        6..8 => |e| *e == BlobError::BadHeaderLength,
        // The count frames the blob, so a damaged count is seen before the CRC.
        44..48 => |e| *e == BlobError::ParamCount,
        _ => |e| matches!(e, BlobError::BadCrc { .. }),
    }
}

#[test]
fn every_flipped_bit_is_rejected_small() {
    let shape = small();
    let b = blob_of(&shape, &params(&shape, 6));
    for pos in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[pos] ^= 1 << bit;
            let want = flip_error(pos);
            let e = blob::read_shape(&c).expect_err("read_shape accepted damage");
            assert!(want(&e), "byte {pos} bit {bit}: {e:?}");
            let e = read_into_sentinel(&c, &shape).expect_err("read_params accepted damage");
            assert!(want(&e), "byte {pos} bit {bit}: {e:?}");
        }
    }
}

#[test]
fn every_flipped_byte_is_rejected_digits() {
    // One bit per byte (rotating), to keep the debug-build run time reasonable.
    let shape = digits();
    let b = blob_of(&shape, &params(&shape, 8));
    let mut c = b.clone();
    for pos in 0..b.len() {
        c[pos] ^= 1 << (pos % 8);
        let e = read_into_sentinel(&c, &shape).expect_err("accepted damage");
        assert!(flip_error(pos)(&e), "byte {pos}: {e:?}");
        c[pos] = b[pos];
    }
}

#[test]
fn crc_trailer_damage() {
    let shape = small();
    let b = blob_of(&shape, &params(&shape, 9));
    let n = b.len();
    let good = blob::crc32(&b[..n - 4]);
    let mut c = b.clone();
    c[n - 1] ^= 0x80;
    let stored = u32::from_le_bytes(c[n - 4..].try_into().unwrap());
    assert_eq!(
        read_into_sentinel(&c, &shape),
        Err(BlobError::BadCrc {
            stored,
            computed: good
        })
    );
}

#[test]
fn non_finite_values_with_valid_crc() {
    let shape = digits();
    let p = params(&shape, 10);
    let base = blob_of(&shape, &p);
    let last = shape.param_len() - 1;
    let values = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    for (k, idx) in [0, 1, 1234, shape.norm_offset(), last]
        .into_iter()
        .enumerate()
    {
        let bad = values[k % values.len()];
        let mut b = base.clone();
        let off = HEADER_LEN + 4 * idx;
        b[off..off + 4].copy_from_slice(&bad.to_le_bytes());
        fix_crc(&mut b);
        // The header is fine, so the host can still learn the shape.
        assert_eq!(blob::read_shape(&b), Ok(shape));
        assert_eq!(
            read_into_sentinel(&b, &shape),
            Err(BlobError::NonFinite { index: idx as u32 }),
            "{bad} at {idx}"
        );
        let mut wide = vec![0.0f64; shape.param_len()];
        assert_eq!(
            blob::read_params(&b, &shape, &mut wide),
            Err(BlobError::NonFinite { index: idx as u32 })
        );
        assert!(wide.iter().all(|&x| x == 0.0));
    }
    // Several bad values: the first one is reported.
    let mut b = base.clone();
    for idx in [900usize, 40, 2000] {
        let off = HEADER_LEN + 4 * idx;
        b[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    fix_crc(&mut b);
    assert_eq!(
        read_into_sentinel(&b, &shape),
        Err(BlobError::NonFinite { index: 40 })
    );
}

#[test]
fn read_into_a_different_compiled_shape() {
    let b = blob_of(&small(), &params(&small(), 11));
    for other in [
        digits(),
        deep(),
        Shape::new(5, &[7, 3], 3, 2), // same sizes, different kinds
        Shape::new(5, &[7, 3], 3, 3).with_posterior(Posterior::PowerSpherical),
    ] {
        assert_eq!(
            read_into_sentinel(&b, &other),
            Err(BlobError::ShapeMismatch),
            "{other:?}"
        );
    }
    // Right shape, wrong destination length.
    let shape = small();
    for len in [0, shape.param_len() - 1, shape.param_len() + 1] {
        let mut dst = vec![SENTINEL; len];
        assert_eq!(
            blob::read_params(&b, &shape, &mut dst),
            Err(BlobError::ParamCount)
        );
        assert!(dst.iter().all(|x| x.to_bits() == SENTINEL.to_bits()));
    }
}

#[test]
fn random_damage_never_panics_nor_half_loads() {
    // Overwrites, truncations, extensions and header scribbles, with and without the CRC
    // repaired: every outcome is either an error with the destination untouched, or a
    // full successful load.
    let shape = small();
    let base = blob_of(&shape, &params(&shape, 12));
    let mut rng = Lcg(0xDEAD_BEEF);
    for round in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                // Anywhere, or within the header (where a scribble is most interesting).
                k @ (0 | 1) if !b.is_empty() => {
                    let span = if k == 0 {
                        b.len()
                    } else {
                        b.len().min(HEADER_LEN)
                    };
                    let i = rng.below(span);
                    b[i] = rng.next_u32() as u8;
                }
                2 => {
                    let n = rng.below(b.len() + 1);
                    b.truncate(n);
                }
                _ => b.push(rng.next_u32() as u8),
            }
        }
        if round % 2 == 0 && b.len() >= 4 {
            fix_crc(&mut b);
        }
        let _ = blob::read_shape(&b);
        if read_into_sentinel(&b, &shape).is_ok() {
            // Only an intact blob for this shape can load.
            assert_eq!(blob::read_shape(&b), Ok(shape));
        }
    }
}

#[test]
fn errors_are_small_copy_std_errors() {
    fn assert_error<E: std::error::Error + Copy + Send + Sync + 'static>() {}
    assert_error::<BlobError>();
    assert!(std::mem::size_of::<BlobError>() <= 12);
    let e: Box<dyn std::error::Error> = Box::new(BlobError::NonFinite { index: 3 });
    assert_eq!(e.to_string(), "parameter 3 is not finite");
}
