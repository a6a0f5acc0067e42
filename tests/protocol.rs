//! The device <-> host protocol: message round trips, frame sizes, and a frame decoder
//! that survives oversized, garbage and truncated input and resynchronises.
//! Run with `cargo test -p hvae --features protocol --test protocol`.

use heapless::Vec as HVec;
use hvae::infer::model::{InferError, Model};
use hvae::protocol::*;
use hvae::store::blob;
use hvae::{Activation, Likelihood, Posterior, Shape};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const DIGITS: Shape = Shape::new(64, &[32], 8, 10).with_posterior(Posterior::PowerSpherical);

fn floats<const N: usize>(n: usize, seed: f32) -> HVec<f32, N> {
    (0..n).map(|i| seed + i as f32 * 0.25 - 3.0).collect()
}

fn info() -> DeviceInfo {
    DeviceInfo::new(
        &DIGITS,
        DIGITS.inference_param_len(),
        0xDEAD_BEEF,
        max_request_frame(64),
        CAP_SEGMENT | CAP_ENCODE | CAP_LOAD,
    )
}

/// One of each request, the sample-carrying ones at their largest.
fn requests() -> Vec<Request> {
    vec![
        Request::Info,
        Request::LoadWeights {
            offset: u32::MAX,
            bytes: (0..MAX_CHUNK).map(|i| i as u8).collect(),
            last: true,
        },
        Request::LoadWeights {
            offset: 0,
            bytes: HVec::new(),
            last: false,
        },
        Request::Segment {
            sample: floats(MAX_SAMPLE, 1.0),
        },
        Request::Encode {
            sample: floats(64, -0.0),
        },
        Request::ReadWeights {
            offset: u32::MAX,
            count: u16::MAX,
        },
        Request::Checkpoint,
        Request::TrainBatch {
            samples: floats(MAX_SAMPLE, 2.0),
            steps: u16::MAX,
            settings: Some(TrainSettings {
                scope: TrainScope::SegmenterOnly,
                optimiser: TrainOptimiser::Sgd { momentum: 0.9 },
                lr: 1e-3,
                batch: u8::MAX,
            }),
        },
        Request::TrainBatch {
            samples: HVec::new(),
            steps: 0,
            settings: None,
        },
    ]
}

/// One of each response, at their largest.
fn responses() -> Vec<Response> {
    let mut errors: Vec<Response> = [
        ErrorCode::Oversized,
        ErrorCode::LoadOrder { expected: u32::MAX },
        ErrorCode::BadCrc {
            stored: u32::MAX,
            computed: u32::MAX - 1,
        },
        ErrorCode::NonFiniteWeight { index: u32::MAX },
        ErrorCode::UnsupportedVersion(u16::MAX),
        ErrorCode::Internal,
    ]
    .into_iter()
    .map(Response::Error)
    .collect();
    let mut big_info = info();
    big_info.weights_crc = u32::MAX;
    big_info.max_frame = u32::MAX;
    big_info.capabilities = u32::MAX;
    big_info.flash_used = u32::MAX;
    big_info.ram_static = u32::MAX;
    big_info.stack_peak = u32::MAX;
    big_info.params_held = u32::MAX;
    big_info.shape.hidden = [u32::MAX; 4];
    big_info.shape.input = u32::MAX;
    big_info.shape.latent = u32::MAX;
    big_info.shape.clusters = u32::MAX;
    big_info.shape.param_len = u32::MAX;
    big_info.shape.inference_param_len = u32::MAX;
    big_info.core = [u16::MAX; 3];
    let mut v = vec![
        Response::Info(info()),
        Response::Info(big_info),
        Response::Segmented {
            label: 254,
            probs: floats(MAX_CLUSTERS, 0.5),
            cosine: -1.0,
            mu: floats(MAX_LATENT, 0.1),
            kappa: 1e4,
        },
        Response::Encoded {
            mu: floats(MAX_LATENT, 0.3),
            kappa: 1.0,
        },
        Response::Weights {
            offset: u32::MAX,
            values: floats(MAX_VALUES, 7.0),
        },
        Response::Ack,
        Response::Loaded {
            weights_crc: u32::MAX,
        },
        Response::Checkpointed { weights_crc: 1 },
        Response::Trained {
            buffered: u32::MAX,
            steps: u32::MAX,
            loss: f32::NAN,
        },
        Response::Centre {
            slot: u8::MAX,
            change: CentreChange::MergedInto(u8::MAX),
            sample: u16::MAX,
            in_use: u8::MAX,
        },
    ];
    v.append(&mut errors);
    v
}

/// The postcard bytes of a message (before COBS).
fn bytes_of<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    postcard::to_slice(msg, &mut buf).unwrap().to_vec()
}

/// Equality that treats NaN payloads bit-wise (the loss of `Trained` may be NaN).
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    bytes_of(a) == bytes_of(b)
}

/// `msg` framed in at most `N` bytes (one zero byte, at the end) and read back by a
/// decoder of `N` bytes, which uses the whole frame and keeps nothing.
fn framed_and_back<T, const N: usize>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + core::fmt::Debug,
{
    let mut buf = [0u8; N];
    let frame = encode(msg, &mut buf).unwrap();
    assert!(frame.len() <= N, "{msg:?}");
    assert_eq!(frame.iter().filter(|&&b| b == 0).count(), 1);
    assert_eq!(frame.last(), Some(&0));
    let mut rx = FrameDecoder::<N>::new();
    let (used, got) = rx.feed::<T>(frame);
    assert_eq!(used, frame.len());
    assert_eq!(rx.pending(), 0);
    got.unwrap().unwrap()
}

#[test]
fn every_request_round_trips_within_the_frame_bound() {
    for req in requests() {
        assert_eq!(framed_and_back::<_, MAX_REQUEST_FRAME>(&req), req);
    }
}

#[test]
fn every_response_round_trips_within_the_frame_bound() {
    for resp in responses() {
        let got = framed_and_back::<_, MAX_RESPONSE_FRAME>(&resp);
        assert!(same(&got, &resp), "{got:?} != {resp:?}");
    }
}

#[test]
fn floats_travel_bit_exact() {
    let specials = [
        0.0f32,
        -0.0,
        f32::MIN_POSITIVE / 2.0,
        f32::MAX,
        f32::EPSILON,
        1.0 / 3.0,
    ];
    let mut sample = HVec::<f32, MAX_SAMPLE>::new();
    sample.extend_from_slice(&specials).unwrap();
    let mut buf = [0u8; 256];
    let frame = encode(&Request::Segment { sample }, &mut buf).unwrap();
    let mut rx = FrameDecoder::<256>::new();
    let Some(Ok(Request::Segment { sample })) = rx.feed::<Request>(frame).1 else {
        panic!("no segment");
    };
    for (a, b) in sample.iter().zip(specials) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
}

#[test]
fn device_sized_buffers_hold_the_digits_traffic() {
    // The receive buffer a 64-input device reserves takes every request it can serve.
    const RX: usize = max_request_frame(64);
    const TX: usize = max_response_frame(10, 8);
    const { assert!(RX < 300 && TX < 300) };
    let mut buf = [0u8; RX];
    for req in [
        Request::Segment {
            sample: floats(64, 0.0),
        },
        Request::LoadWeights {
            offset: 1 << 20,
            bytes: (0..MAX_CHUNK).map(|i| i as u8).collect(),
            last: false,
        },
    ] {
        assert!(encode(&req, &mut buf).is_ok(), "{req:?}");
    }
    let mut buf = [0u8; TX];
    let seg = Response::Segmented {
        label: 9,
        probs: floats(10, 0.0),
        cosine: 1.0,
        mu: floats(8, 0.0),
        kappa: 3.0,
    };
    assert!(encode(&seg, &mut buf).is_ok());
    assert!(encode(&Response::Info(info()), &mut buf).is_ok());
    let weights = Response::Weights {
        offset: u32::MAX,
        values: floats(MAX_VALUES, 0.0),
    };
    assert!(encode(&weights, &mut buf).is_ok());
    // A sample much too long for that device is an oversized frame there, not a crash
    // (one only a little too long fits the buffer and gets `InputLength` from the model).
    let mut big = [0u8; MAX_REQUEST_FRAME];
    let frame = encode(
        &Request::Segment {
            sample: floats(100, 0.0),
        },
        &mut big,
    )
    .unwrap();
    let mut rx = FrameDecoder::<{ RX - 1 }>::new(); // the 0x00 is not stored
    let (_, got) = rx.feed::<Request>(frame);
    assert_eq!(got, Some(Err(FrameError::Oversized)));
}

#[test]
fn encode_reports_a_small_buffer() {
    let mut buf = [0u8; 8];
    let r = encode(
        &Request::Segment {
            sample: floats(4, 0.0),
        },
        &mut buf,
    );
    assert_eq!(r.unwrap_err(), FrameError::BufferFull);
}

/// Decodes everything in `stream`, returning each frame's outcome in order.
fn decode_all<const N: usize>(
    rx: &mut FrameDecoder<N>,
    mut stream: &[u8],
) -> Vec<Result<Request, FrameError>> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let (used, got) = rx.feed::<Request>(stream);
        stream = &stream[used..];
        out.extend(got);
    }
    out
}

fn frame_of(req: &Request) -> Vec<u8> {
    let mut buf = [0u8; MAX_REQUEST_FRAME];
    encode(req, &mut buf).unwrap().to_vec()
}

#[test]
fn oversized_frame_gives_one_error_then_resyncs() {
    let big = frame_of(&Request::Segment {
        sample: floats(100, 0.0),
    });
    let small = frame_of(&Request::Info);
    let mut rx = FrameDecoder::<64>::new();
    let mut stream = small.clone();
    stream.extend(&big);
    stream.extend(&small);
    stream.extend(&big);
    stream.extend(&big);
    stream.extend(&small);
    let out = decode_all(&mut rx, &stream);
    assert_eq!(
        out,
        vec![
            Ok(Request::Info),
            Err(FrameError::Oversized),
            Ok(Request::Info),
            Err(FrameError::Oversized),
            Err(FrameError::Oversized),
            Ok(Request::Info),
        ]
    );
    // A frame of exactly the buffer size fits.
    let exact = frame_of(&Request::Segment {
        sample: floats(14, 0.0),
    });
    // tag, length, 14 floats; one COBS code byte; 0x00
    assert_eq!(exact.len(), 60);
    let mut rx = FrameDecoder::<59>::new();
    assert!(matches!(
        decode_all(&mut rx, &exact)[..],
        [Ok(Request::Segment { .. })]
    ));
    let mut rx = FrameDecoder::<58>::new();
    assert_eq!(
        decode_all(&mut rx, &exact),
        vec![Err(FrameError::Oversized)]
    );
}

#[test]
fn empty_frames_are_ignored() {
    let mut rx = FrameDecoder::<64>::new();
    let mut stream = vec![0, 0, 0];
    stream.extend(frame_of(&Request::Checkpoint));
    stream.extend([0, 0]);
    assert_eq!(decode_all(&mut rx, &stream), vec![Ok(Request::Checkpoint)]);
}

#[test]
fn truncated_frames_are_errors_and_the_next_frame_decodes() {
    let full = frame_of(&Request::Segment {
        sample: floats(20, 1.0),
    });
    let body = &full[..full.len() - 1];
    let info = frame_of(&Request::Info);
    for cut in 1..body.len() {
        let mut rx = FrameDecoder::<512>::new();
        let mut stream = body[..cut].to_vec();
        stream.push(0);
        stream.extend(&info);
        let out = decode_all(&mut rx, &stream);
        assert_eq!(out.len(), 2, "cut {cut}: {out:?}");
        assert!(
            matches!(
                out[0],
                Err(FrameError::Truncated | FrameError::BadEncoding | FrameError::Malformed)
            ),
            "cut {cut}: {:?}",
            out[0]
        );
        assert_eq!(out[1], Ok(Request::Info));
    }
    // Cut inside the payload of an intact COBS block: postcard sees the end.
    let mut cut = cobs_encode(
        &bytes_of(&Request::ReadWeights {
            offset: 1,
            count: 2,
        })[..2],
    );
    cut.push(0);
    let mut rx = FrameDecoder::<64>::new();
    assert_eq!(decode_all(&mut rx, &cut), vec![Err(FrameError::Truncated)]);
}

/// COBS-encodes raw bytes (no closing zero) with a reference encoder written here, so the
/// decoder is not only checked against its own encoder.
fn cobs_encode(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut code_at = 0;
    let mut code = 1u8;
    for &b in raw {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out
}

#[test]
fn reference_cobs_frames_decode() {
    for req in requests() {
        let raw = bytes_of(&req);
        let mut frame = cobs_encode(&raw);
        frame.push(0);
        assert_eq!(frame, frame_of(&req), "{req:?}");
    }
}

#[test]
fn trailing_bytes_and_unknown_variants_are_reported() {
    let mut raw = bytes_of(&Request::Info);
    raw.push(7);
    let mut frame = cobs_encode(&raw);
    frame.push(0);
    let mut rx = FrameDecoder::<64>::new();
    assert_eq!(
        decode_all(&mut rx, &frame),
        vec![Err(FrameError::TrailingBytes)]
    );
    let mut frame = cobs_encode(&[100]);
    frame.push(0);
    assert_eq!(
        decode_all(&mut rx, &frame),
        vec![Err(FrameError::Malformed)]
    );
    // A bool that is neither 0 nor 1.
    let mut raw = bytes_of(&Request::LoadWeights {
        offset: 0,
        bytes: HVec::new(),
        last: false,
    });
    *raw.last_mut().unwrap() = 2;
    let mut frame = cobs_encode(&raw);
    frame.push(0);
    assert_eq!(
        decode_all(&mut rx, &frame),
        vec![Err(FrameError::Malformed)]
    );
    // A length prefix beyond the vector's capacity.
    let mut frame = cobs_encode(&[2, 0x81, 0x08]); // Segment with 1025 values
    frame.push(0);
    assert!(matches!(
        decode_all(&mut rx, &frame)[..],
        [Err(FrameError::Malformed | FrameError::Truncated)]
    ));
}

#[test]
fn garbage_never_panics_and_a_zero_resyncs() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
    let good = frame_of(&Request::Encode {
        sample: floats(8, 0.0),
    });
    for round in 0..2000 {
        let len = (rng.next_u32() % 600) as usize;
        let dense_zeros = round % 2 == 0;
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                let b = rng.next_u32() as u8;
                if !dense_zeros && b == 0 {
                    1
                } else {
                    b
                }
            })
            .collect();
        let mut rx = FrameDecoder::<128>::new();
        let out = decode_all(&mut rx, &garbage);
        // At most one outcome per frame, plus one per overflow.
        assert!(out.len() <= garbage.len());
        // After a flushing zero, a good frame always decodes.
        let mut tail = vec![0];
        tail.extend(&good);
        let out = decode_all(&mut rx, &tail);
        assert!(
            matches!(out.last(), Some(Ok(Request::Encode { .. }))),
            "round {round}: {out:?}"
        );
    }
}

#[test]
fn byte_at_a_time_equals_bulk() {
    let mut stream = Vec::new();
    for req in requests() {
        stream.extend(frame_of(&req));
        stream.extend([0x13, 0x37]); // a damaged frame between good ones
        stream.push(0);
    }
    let mut a = FrameDecoder::<MAX_REQUEST_FRAME>::new();
    let bulk = decode_all(&mut a, &stream);
    let mut b = FrameDecoder::<MAX_REQUEST_FRAME>::new();
    let single: Vec<_> = stream
        .iter()
        .filter_map(|&x| b.push::<Request>(x))
        .collect();
    assert_eq!(bulk, single);
    assert_eq!(bulk.len(), 2 * requests().len());
    for (i, r) in bulk.iter().enumerate() {
        assert_eq!(r.is_ok(), i % 2 == 0, "{i}: {r:?}");
    }
}

/// The digits model's shape, a tanh and Bernoulli one of two layers, and one of four.
fn shapes() -> [Shape; 3] {
    [
        DIGITS,
        Shape::new(5, &[7, 3], 3, 2)
            .with_activation(Activation::Tanh)
            .with_likelihood(Likelihood::Bernoulli),
        Shape::new(2, &[4, 4, 4, 4], 2, 1),
    ]
}

#[test]
fn shape_info_round_trips() {
    for shape in shapes() {
        let info = ShapeInfo::from(&shape);
        assert_eq!(info.to_shape(), Some(shape));
        assert_eq!(info.param_len as usize, shape.param_len());
    }
    let mut bad = ShapeInfo::from(&DIGITS);
    bad.param_len += 1;
    assert_eq!(bad.to_shape(), None);
    let mut bad = ShapeInfo::from(&DIGITS);
    bad.posterior = 2;
    assert_eq!(bad.to_shape(), None);
    let mut bad = ShapeInfo::from(&DIGITS);
    bad.depth = 9;
    assert_eq!(bad.to_shape(), None);
    let i = info();
    assert_eq!(i.protocol, VERSION);
    assert_eq!(i.blob, blob::VERSION);
    assert_eq!(i.core, [0, 1, 0]);
}

#[test]
fn error_codes_map_from_core_errors() {
    assert_eq!(
        ErrorCode::from(InferError::InputLength),
        ErrorCode::InputLength
    );
    assert_eq!(
        ErrorCode::from(InferError::ZeroDirection),
        ErrorCode::ZeroDirection
    );
    assert_eq!(ErrorCode::from(FrameError::Oversized), ErrorCode::Oversized);
    assert_eq!(
        ErrorCode::from(blob::BlobError::BadCrc {
            stored: 1,
            computed: 2
        }),
        ErrorCode::BadCrc {
            stored: 1,
            computed: 2
        }
    );
    assert!(!ErrorCode::LoadOrder { expected: 4 }.to_string().is_empty());
}

fn model_and_blob(shape: Shape, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut params = vec![0.0f32; shape.param_len()];
    let mut m = Model::new(shape, &mut params[..]).unwrap();
    m.init(&mut Xoshiro256PlusPlus::seed_from_u64(seed));
    let mut bytes = vec![0u8; blob::blob_len(&shape)];
    blob::write(&shape, &params, &mut bytes).unwrap();
    (params, bytes)
}

/// Streams `bytes` in chunks of `chunk` bytes; returns the parameters the sink saw.
fn stream_blob(
    loader: &mut WeightLoader,
    bytes: &[u8],
    chunk: usize,
) -> Result<(Vec<f32>, u32), ErrorCode> {
    let mut seen = Vec::new();
    for (i, c) in bytes.chunks(chunk).enumerate() {
        loader.feed((i * chunk) as u32, c, |idx, v| {
            assert_eq!(idx, seen.len());
            seen.push(v);
            Ok(())
        })?;
    }
    Ok((seen, loader.finish()?))
}

#[test]
fn blob_header_is_what_the_blob_writer_writes() {
    for shape in shapes() {
        let (_, bytes) = model_and_blob(shape, 9);
        assert_eq!(blob_header(&shape)[..], bytes[..blob::HEADER_LEN]);
    }
    const H: [u8; blob::HEADER_LEN] = blob_header(&DIGITS);
    assert_eq!(&H[..4], b"HVAE");
}

#[test]
fn weight_loader_streams_a_blob() {
    let (params, bytes) = model_and_blob(DIGITS, 1);
    let crc = blob::crc32(&bytes[..bytes.len() - 4]);
    let mut loader = WeightLoader::new(DIGITS);
    assert_eq!(loader.blob_len(), bytes.len());
    for chunk in [1, 3, 4, 7, 48, 255, MAX_CHUNK] {
        let (seen, got) = stream_blob(&mut loader, &bytes, chunk).unwrap();
        assert_eq!(got, crc);
        assert_eq!(seen, params);
        assert_eq!(loader.received(), 0);
    }
}

#[test]
fn weight_loader_rejects_bad_blobs_and_recovers() {
    let (_, bytes) = model_and_blob(DIGITS, 2);
    let mut loader = WeightLoader::new(DIGITS);
    let check = |loader: &mut WeightLoader, b: &[u8], want: ErrorCode| {
        let got = stream_blob(loader, b, 100).map(|_| ());
        assert_eq!(got, Err(want));
        // The loader is ready for a good blob afterwards.
        assert!(stream_blob(loader, &bytes, 100).is_ok());
    };
    let mut b = bytes.clone();
    b[0] = b'X';
    check(&mut loader, &b, ErrorCode::BadMagic);
    let mut b = bytes.clone();
    b[4] = 2;
    check(&mut loader, &b, ErrorCode::UnsupportedVersion(2));
    let mut b = bytes.clone();
    b[8] = 1; // a flag
    check(&mut loader, &b, ErrorCode::BadHeader);
    let mut b = bytes.clone();
    b[12] = 7; // posterior code
    check(&mut loader, &b, ErrorCode::BadHeader);
    let mut b = bytes.clone();
    b[12] = 0; // the other posterior: another model
    check(&mut loader, &b, ErrorCode::ShapeMismatch);
    // Another architecture entirely.
    let (_, other) = model_and_blob(Shape::new(64, &[16], 8, 10), 3);
    check(&mut loader, &other, ErrorCode::ShapeMismatch);
    // A flipped bit in the parameters.
    let mut b = bytes.clone();
    b[1000] ^= 0x10;
    let stored = u32::from_le_bytes(b[b.len() - 4..].try_into().unwrap());
    let computed = blob::crc32(&b[..b.len() - 4]);
    check(&mut loader, &b, ErrorCode::BadCrc { stored, computed });
    // A NaN, with a valid CRC (the writer never makes one; a hostile host might).
    let mut b = bytes.clone();
    b[blob::HEADER_LEN + 4 * 5..blob::HEADER_LEN + 4 * 6].copy_from_slice(&f32::NAN.to_le_bytes());
    let n = b.len();
    let crc = blob::crc32(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    check(&mut loader, &b, ErrorCode::NonFiniteWeight { index: 5 });
    // Too short, too long.
    check(
        &mut loader,
        &bytes[..bytes.len() - 1],
        ErrorCode::LoadLength,
    );
    let mut b = bytes.clone();
    b.push(0);
    check(&mut loader, &b, ErrorCode::LoadLength);
}

#[test]
fn weight_loader_enforces_order_and_sink_errors() {
    let (_, bytes) = model_and_blob(DIGITS, 5);
    let mut loader = WeightLoader::new(DIGITS);
    loader.feed(0, &bytes[..10], |_, _| Ok(())).unwrap();
    assert_eq!(
        loader.feed(20, &bytes[20..30], |_, _| Ok(())),
        Err(ErrorCode::LoadOrder { expected: 10 })
    );
    // Abandoned: the next chunk must start a new blob.
    assert_eq!(
        loader.feed(10, &bytes[10..20], |_, _| Ok(())),
        Err(ErrorCode::LoadOrder { expected: 0 })
    );
    // A chunk at 0 restarts at any time.
    loader.feed(0, &bytes[..100], |_, _| Ok(())).unwrap();
    loader.feed(0, &bytes[..100], |_, _| Ok(())).unwrap();
    assert_eq!(loader.received(), 100);
    // The sink's error aborts the load.
    assert_eq!(
        loader.feed(100, &bytes[100..200], |_, _| Err(ErrorCode::Storage)),
        Err(ErrorCode::Storage)
    );
    assert_eq!(loader.received(), 0);
    // finish before the end.
    loader.feed(0, &bytes[..100], |_, _| Ok(())).unwrap();
    assert_eq!(loader.finish(), Err(ErrorCode::LoadLength));
}

#[test]
fn int8_weight_loader_hands_on_the_words_and_checks_the_padding() {
    use hvae::infer::quant::{float_len, int_len, weight_len, QuantModel};
    // 35 + 21 + 9 = 65 int8 weights: three bytes of padding after them.
    let shape = Shape::new(5, &[7, 3], 3, 2);
    let w: Vec<i8> = (0..weight_len(&shape))
        .map(|i| (i % 251) as i8 - 100)
        .collect();
    let n: Vec<i32> = (0..int_len(&shape)).map(|i| 1 + (i % 7) as i32).collect();
    let f: Vec<f32> = (0..float_len(&shape)).map(|i| 0.5 + i as f32).collect();
    let q = QuantModel::new(shape, w, n, f).unwrap();
    let mut bytes = vec![0u8; blob::int8_blob_len(&shape)];
    blob::write_int8(&q, &mut bytes).unwrap();
    let stream = |bytes: &[u8]| -> Result<(Vec<u32>, u32), ErrorCode> {
        let mut loader = WeightLoader::<Int8Blob>::of_format(shape);
        let mut words = Vec::new();
        for (i, c) in bytes.chunks(7).enumerate() {
            loader.feed((i * 7) as u32, c, |idx, v| {
                assert_eq!(idx, words.len());
                words.push(v);
                Ok(())
            })?;
        }
        Ok((words, loader.finish()?))
    };
    let (words, crc) = stream(&bytes).unwrap();
    let h = blob::HEADER_LEN_INT8;
    let want: Vec<u32> = bytes[h..bytes.len() - 4]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(words, want);
    assert_eq!(words.len(), hvae::device::int8_words(&shape));
    assert_eq!(crc, blob::crc32(&bytes[..bytes.len() - 4]));
    // A padding byte that is not zero (CRC fixed): refused, as the blob reader does.
    let mut padded = bytes.clone();
    padded[h + 66] = 1;
    let end = padded.len() - 4;
    let c = blob::crc32(&padded[..end]);
    padded[end..].copy_from_slice(&c.to_le_bytes());
    assert_eq!(
        blob::read_int8_shape(&padded).map(|_| ()),
        Ok(()),
        "header, length and CRC are fine"
    );
    assert_eq!(stream(&padded), Err(ErrorCode::OutOfRange));
    // An f32 blob to the int8 loader, and an int8 blob to the f32 loader.
    let (_, f32_blob) = model_and_blob(shape, 3);
    assert_eq!(stream(&f32_blob), Err(ErrorCode::UnsupportedVersion(1)));
    let mut loader = WeightLoader::new(shape);
    assert_eq!(
        loader.feed(0, &bytes, |_, _| Ok(())),
        Err(ErrorCode::UnsupportedVersion(2))
    );
}

#[test]
fn segmented_response_carries_the_model_output() {
    let (params, _) = model_and_blob(DIGITS, 6);
    let model = Model::new(DIGITS, &params[..]).unwrap();
    let mut work = vec![0.0f32; DIGITS.work_len()];
    let x: Vec<f32> = (0..64).map(|i| (i % 7) as f32).collect();
    let s = model.segment(&x, &mut work).unwrap();
    let Response::Segmented {
        label,
        probs,
        cosine,
        mu,
        kappa,
    } = Response::segmented(&s).unwrap()
    else {
        panic!()
    };
    assert_eq!(label as usize, s.label);
    assert_eq!(&probs[..], s.probs);
    assert_eq!(&mu[..], s.mu);
    assert_eq!((cosine, kappa), (s.cosine, s.kappa));
}

/// `borrowed::parse` and the serde decoder on the same message bytes: the same request
/// (compared by encoding, so NaN payloads compare equal) or the same error.
fn agree(body: &[u8]) -> bool {
    let mine = borrowed::parse(body).map(|r| r.to_request());
    let theirs = decode_body::<Request>(body);
    match (mine, theirs) {
        (Ok(a), Ok(b)) => same(&a, &b),
        (a, b) => a == b,
    }
}

#[test]
fn borrowed_parser_agrees_with_the_decoder_on_every_variant_and_every_cut() {
    for req in requests() {
        let body = bytes_of(&req);
        let r = borrowed::parse(&body).unwrap();
        assert!(same(&r.to_request(), &req), "{req:?}");
        // Every prefix (truncated), every single-byte corruption, and a trailing byte.
        for cut in 0..body.len() {
            assert!(agree(&body[..cut]), "{req:?} cut at {cut}");
        }
        let step = (body.len() / 64).max(1);
        for at in (0..body.len()).step_by(step) {
            for x in [0x00u8, 0x01, 0x7F, 0x80, 0xFF] {
                let mut bad = body.clone();
                bad[at] = x;
                assert!(agree(&bad), "{req:?} byte {at} = {x:#x}");
            }
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(borrowed::parse(&long), Err(FrameError::TrailingBytes));
    }
    // Vectors one past their capacity; over-long varints; unknown tags.
    let over = [
        vec![2, 0x81, 0x02], // Segment with 257 values: Truncated before the cap
        vec![7],             // no such request
        vec![4, 0x80, 0x80, 0x80, 0x80, 0x10, 0], // u32 varint with a sixth bit set
        vec![4, 0, 0x80, 0x80, 0x04], // u16 varint past 65535
        vec![1, 0, 0, 2],    // bool tag 2
    ];
    for body in over {
        assert!(borrowed::parse(&body).is_err(), "{body:?}");
        assert!(agree(&body), "{body:?}");
    }
    let mut full = vec![2u8, 0x81, 0x02];
    full.extend(std::iter::repeat_n(0x3f, 4 * 257));
    assert_eq!(borrowed::parse(&full), Err(FrameError::Malformed));
    assert!(agree(&full));
}

#[test]
fn push_frame_returns_the_message_bytes_with_the_decoders_errors() {
    let req = Request::ReadWeights {
        offset: 300,
        count: 7,
    };
    let mut stream = vec![0x00, 0x05, 0x00]; // an empty frame, a bad one
    stream.extend(frame_of(&req));
    let mut rx = FrameDecoder::<64>::new();
    let mut got = Vec::new();
    for &b in &stream {
        if let Some(r) = rx.push_frame(b) {
            got.push(r.map(|body| body.to_vec()));
        }
    }
    assert_eq!(got, vec![Err(FrameError::BadEncoding), Ok(bytes_of(&req))]);
    let body = bytes_of(&req);
    assert_eq!(
        borrowed::parse(&body),
        Ok(borrowed::RequestRef::ReadWeights {
            offset: 300,
            count: 7
        })
    );
}
