//! The int8 weight blob (format version 2): round trips, and every kind of corruption
//! rejected with its own error and without touching the destination, as for version 1
//! (tests/blob.rs).

use hvae::infer::quant::{
    float_len, int_len, quantize, weight_len, Calibration, QuantLayout, QuantModel,
};
use hvae::store::blob::{self, BlobError, HEADER_LEN_INT8, MAGIC, VERSION_INT8};
use hvae::{Activation, Model, QuantError, Shape};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

mod blob_bytes;

use blob_bytes::{fix_crc, set_u32};

// Header offsets, as documented in the module's layout table.
const OFF_VERSION: usize = 4;
const OFF_HEADER_LEN: usize = 6;
const OFF_FLAGS: usize = 8;
const OFF_ACTIVATION: usize = 14;
const OFF_DEPTH: usize = 15;
const OFF_LATENT: usize = 36;
const OFF_WEIGHTS: usize = 44;
const OFF_INTS: usize = 48;
const OFF_FLOATS: usize = 52;

type Owned = QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>;

fn digits() -> Shape {
    Shape::new(64, &[32], 8, 10)
}

/// Weights of an odd count (padding after them).
fn small() -> Shape {
    Shape::new(5, &[7, 3], 3, 2)
}

/// A quantised model with He-uniform weights, calibrated on normal data.
fn model(shape: Shape, seed: u64) -> Owned {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut m = Model::new(shape, vec![0.0f32; shape.param_len()]).unwrap();
    m.init(&mut rng);
    // Non-zero direction biases: a sample that no hidden unit fires for keeps a direction.
    let mu_b = shape.find(hvae::shape::TensorId::MuBias).unwrap();
    m.params_mut()[mu_b.range()].fill(0.25);
    let mut cal = Calibration::new(
        &shape,
        vec![0f32; hvae::infer::quant::calibration_len(&shape)],
    )
    .unwrap();
    let mut work = vec![0f32; shape.work_len()];
    for _ in 0..50 {
        let x: Vec<f32> = (0..shape.input)
            .map(|_| hvae::dist::rng::standard_normal::<f32, _>(&mut rng))
            .collect();
        cal.observe(&m, &x, &mut work).unwrap();
    }
    let (mut w, mut i, mut f) = vecs(&shape);
    quantize(&m, &cal, &mut w, &mut i, &mut f).unwrap();
    QuantModel::new(shape, w, i, f).unwrap()
}

fn vecs(s: &Shape) -> (Vec<i8>, Vec<i32>, Vec<f32>) {
    (
        vec![0; weight_len(s)],
        vec![0; int_len(s)],
        vec![0.0; float_len(s)],
    )
}

fn blob_of(q: &Owned) -> Vec<u8> {
    let mut out = vec![0u8; blob::int8_blob_len(q.shape())];
    let n = blob::write_int8(q, &mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

/// Reads into vectors filled with a sentinel and checks they are untouched on error.
fn read(bytes: &[u8], shape: &Shape) -> Result<Owned, BlobError> {
    let (mut w, mut i, mut f) = (
        vec![99i8; weight_len(shape)],
        vec![-777i32; int_len(shape)],
        vec![-12345.678f32; float_len(shape)],
    );
    match blob::read_int8(bytes, shape, &mut w, &mut i, &mut f) {
        Ok(crc) => {
            assert_eq!(crc, blob::crc32(&bytes[..bytes.len() - 4]));
            Ok(QuantModel::new(*shape, w, i, f).unwrap())
        }
        Err(e) => {
            assert!(w.iter().all(|&v| v == 99), "weights touched by {e:?}");
            assert!(i.iter().all(|&v| v == -777), "ints touched by {e:?}");
            assert!(
                f.iter().all(|v| v.to_bits() == (-12345.678f32).to_bits()),
                "floats touched by {e:?}"
            );
            Err(e)
        }
    }
}

#[test]
fn header_and_round_trip() {
    for (shape, seed) in [(digits(), 1), (small(), 2)] {
        let q = model(shape, seed);
        let b = blob_of(&q);
        assert_eq!(&b[0..4], &MAGIC);
        assert_eq!(&b[4..6], &VERSION_INT8.to_le_bytes());
        assert_eq!(&b[6..8], &(HEADER_LEN_INT8 as u16).to_le_bytes());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(OFF_WEIGHTS) as usize, weight_len(&shape));
        assert_eq!(u32_at(OFF_INTS) as usize, int_len(&shape));
        assert_eq!(u32_at(OFF_FLOATS) as usize, float_len(&shape));
        // The weights follow the header byte for byte.
        let w: Vec<i8> = b[56..56 + weight_len(&shape)]
            .iter()
            .map(|&v| v as i8)
            .collect();
        assert_eq!(w, q.weights());
        assert_eq!(blob::read_int8_shape(&b), Ok(shape));
        let back = read(&b, &shape).unwrap();
        assert_eq!(back.weights(), q.weights());
        assert_eq!(back.ints(), q.ints());
        let bits = |f: &[f32]| f.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(back.floats()), bits(q.floats()));
    }
    // The digits model: 64 x 32 + 8 x 32 weights; 3 x 32 + 8 ints; 3 x 64 + 2 x 32 + 8
    // + 32 + 1 + (80 + 1 + 10) floats.
    assert_eq!(
        blob::int8_blob_len(&digits()),
        56 + 2304 + 4 * (104 + 388) + 4
    );
}

#[test]
fn versions_do_not_mix() {
    let q = model(small(), 3);
    let b = blob_of(&q);
    // The f32 reader refuses an int8 blob, and the other way round.
    assert_eq!(blob::read_shape(&b), Err(BlobError::UnsupportedVersion(2)));
    let s = small();
    let mut f = vec![0f32; s.param_len()];
    assert_eq!(
        blob::read_params(&b, &s, &mut f),
        Err(BlobError::UnsupportedVersion(2))
    );
    let mut v1 = vec![0u8; blob::blob_len(&s)];
    blob::write(&s, &vec![0.5f32; s.param_len()], &mut v1).unwrap();
    assert_eq!(
        blob::read_int8_shape(&v1),
        Err(BlobError::UnsupportedVersion(1))
    );
    assert_eq!(read(&v1, &s).unwrap_err(), BlobError::UnsupportedVersion(1));
}

#[test]
fn header_fields() {
    let shape = small();
    let b = blob_of(&model(shape, 4));
    let edited = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut c = b.clone();
        f(&mut c);
        fix_crc(&mut c);
        (blob::read_int8_shape(&c), read(&c, &shape).map(|_| ()))
    };
    let (s, r) = edited(&|c| c[0] = b'X');
    assert_eq!((s, r), (Err(BlobError::BadMagic), Err(BlobError::BadMagic)));
    let (s, _) = edited(&|c| c[OFF_VERSION] = 3);
    assert_eq!(s, Err(BlobError::UnsupportedVersion(3)));
    let (s, _) = edited(&|c| c[OFF_HEADER_LEN] = 48);
    assert_eq!(s, Err(BlobError::BadHeaderLength));
    let (s, _) = edited(&|c| set_u32(c, OFF_FLAGS, 1));
    assert_eq!(s, Err(BlobError::UnsupportedFlags(1)));
    let (s, _) = edited(&|c| c[OFF_ACTIVATION] = 7);
    assert_eq!(s, Err(BlobError::UnknownKind));
    // A tanh model's int8 form has a table per hidden layer more: a ReLU model's
    // counts do not match it.
    let (s, r) = edited(&|c| c[OFF_ACTIVATION] = 1);
    assert_eq!(s, Err(BlobError::ParamCount));
    assert_eq!(r, Err(BlobError::ShapeMismatch));
    // Other valid sizes: the counts no longer match them.
    let (s, _) = edited(&|c| set_u32(c, OFF_LATENT, 4));
    assert_eq!(s, Err(BlobError::ParamCount));
    let (s, _) = edited(&|c| c[OFF_DEPTH] = 0);
    assert!(matches!(s, Err(BlobError::BadShape(_))), "{s:?}");
    // Each count field.
    for off in [OFF_WEIGHTS, OFF_INTS, OFF_FLOATS] {
        for v in [0u32, 1, 1000, u32::MAX] {
            let (s, r) = edited(&|c| set_u32(c, off, v));
            assert_eq!(s, Err(BlobError::ParamCount), "{off} {v}");
            assert_eq!(r, Err(BlobError::ParamCount), "{off} {v}");
        }
    }
    // A different compiled model.
    let other = digits();
    let mut w = vec![0i8; weight_len(&other)];
    let mut i = vec![0i32; int_len(&other)];
    let mut f = vec![0f32; float_len(&other)];
    assert_eq!(
        blob::read_int8(&b, &other, &mut w, &mut i, &mut f),
        Err(BlobError::ShapeMismatch)
    );
    // Right model, wrong destination lengths.
    let (mut w, mut i, mut f) = vecs(&shape);
    w.push(0);
    assert_eq!(
        blob::read_int8(&b, &shape, &mut w, &mut i, &mut f),
        Err(BlobError::ParamCount)
    );
}

#[test]
fn truncation_and_trailing_bytes() {
    let shape = small();
    let b = blob_of(&model(shape, 5));
    for n in 0..b.len() {
        assert_eq!(
            blob::read_int8_shape(&b[..n]),
            Err(BlobError::Truncated),
            "{n}"
        );
        assert_eq!(
            read(&b[..n], &shape).unwrap_err(),
            BlobError::Truncated,
            "{n}"
        );
    }
    for extra in [1usize, 4, 100] {
        let mut c = b.clone();
        c.extend(std::iter::repeat_n(0u8, extra));
        assert_eq!(read(&c, &shape).unwrap_err(), BlobError::TrailingBytes);
        fix_crc(&mut c);
        assert_eq!(read(&c, &shape).unwrap_err(), BlobError::TrailingBytes);
    }
}

/// The error a single flipped bit at `pos` (CRC not fixed) must give.
fn flip_error(pos: usize) -> fn(&BlobError) -> bool {
    match pos {
        0..4 => |e| *e == BlobError::BadMagic,
        4..6 => |e| matches!(e, BlobError::UnsupportedVersion(_)),
        6..8 => |e| *e == BlobError::BadHeaderLength,
        // The counts frame the blob, so a damaged count is seen before the CRC, unless
        // the weights' padding absorbs it (the framing still holds; the CRC fails).
        44..56 => |e| matches!(e, BlobError::ParamCount | BlobError::BadCrc { .. }),
        _ => |e| matches!(e, BlobError::BadCrc { .. }),
    }
}

#[test]
fn every_flipped_bit_is_rejected() {
    let shape = small();
    let b = blob_of(&model(shape, 6));
    for pos in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[pos] ^= 1 << bit;
            let e = read(&c, &shape).expect_err("accepted damage");
            assert!(flip_error(pos)(&e), "byte {pos} bit {bit}: {e:?}");
        }
    }
    // The digits model, one bit per byte.
    let shape = digits();
    let b = blob_of(&model(shape, 7));
    for pos in 0..b.len() {
        let mut c = b.clone();
        c[pos] ^= 1 << (pos % 8);
        let e = read(&c, &shape).expect_err("accepted damage");
        assert!(flip_error(pos)(&e), "byte {pos}: {e:?}");
    }
}

#[test]
fn bad_values_with_valid_crc() {
    let shape = small();
    let q = model(shape, 8);
    let base = blob_of(&q);
    let nw = weight_len(&shape);
    let ints_at = 56 + nw.next_multiple_of(4);
    let floats_at = ints_at + 4 * int_len(&shape);
    let at = QuantLayout::of(&shape);
    let cases: Vec<(usize, Vec<u8>, BlobError)> = vec![
        (
            56 + 3,
            vec![0x80],
            BlobError::Int8(QuantError::WeightRange { index: 3 }),
        ),
        (56 + nw, vec![1], BlobError::BadPadding),
        // Channel 1's shift, channel 2's multiplier, a direction bias.
        (
            ints_at + 4 * 5,
            0u32.to_le_bytes().to_vec(),
            BlobError::Int8(QuantError::Channel { index: 3 }),
        ),
        (
            ints_at + 4 * 7,
            (-1i32).to_le_bytes().to_vec(),
            BlobError::Int8(QuantError::Channel { index: 6 }),
        ),
        (
            ints_at + 4 * 30,
            (i32::MAX).to_le_bytes().to_vec(),
            BlobError::Int8(QuantError::Channel { index: 30 }),
        ),
        (
            floats_at + 4 * at.input_mult,
            f32::NAN.to_le_bytes().to_vec(),
            BlobError::Int8(QuantError::NonFinite {
                index: at.input_mult as u32,
            }),
        ),
        (
            floats_at + 4 * at.act_scales,
            (-1.0f32).to_le_bytes().to_vec(),
            BlobError::Int8(QuantError::NonFinite {
                index: at.act_scales as u32,
            }),
        ),
        (
            floats_at + 4 * (at.end - 1),
            f32::INFINITY.to_le_bytes().to_vec(),
            BlobError::Int8(QuantError::NonFinite {
                index: (at.end - 1) as u32,
            }),
        ),
    ];
    assert_eq!(int_len(&shape), 3 * 10 + 3);
    for (off, bytes, want) in cases {
        let mut b = base.clone();
        b[off..off + bytes.len()].copy_from_slice(&bytes);
        fix_crc(&mut b);
        // The header is fine, so the host can still learn the shape.
        assert_eq!(blob::read_int8_shape(&b), Ok(shape));
        assert_eq!(read(&b, &shape).unwrap_err(), want, "at {off}");
    }
}

#[test]
fn writer_refuses_short_buffers_and_a_tanh_model_needs_its_tables() {
    let q = model(small(), 9);
    let n = blob::int8_blob_len(q.shape());
    let mut out = vec![7u8; n - 1];
    assert_eq!(
        blob::write_int8(&q, &mut out),
        Err(BlobError::BufferTooSmall)
    );
    assert!(out.iter().all(|&b| b == 7));
    // A tanh model of the same sizes takes a table per hidden layer more.
    let s = small().with_activation(Activation::Tanh);
    assert_eq!(
        QuantModel::new(s, q.weights(), q.ints(), q.floats()).unwrap_err(),
        QuantError::Length
    );
}

#[test]
fn random_damage_never_panics_nor_half_loads() {
    let shape = small();
    let base = blob_of(&model(shape, 10));
    let mut state = 0x1234_5678_u64;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n
    };
    let mut loaded = 0;
    for round in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..1 + next(3) {
            match next(3) {
                0 if !b.is_empty() => {
                    let i = next(b.len());
                    b[i] = next(256) as u8;
                }
                1 => b.truncate(next(b.len() + 1)),
                _ => b.extend(std::iter::repeat_n(next(256) as u8, 1 + next(8))),
            }
        }
        if round % 2 == 0 && b.len() >= 4 {
            fix_crc(&mut b);
        }
        if read(&b, &shape).is_ok() {
            loaded += 1;
        }
    }
    // Some scribbles land on values that stay valid (with the CRC repaired).
    assert!(loaded > 0);
}
