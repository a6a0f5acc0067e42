//! Property tests: weight blobs and protocol messages survive a round trip bit for bit,
//! and the parsers never panic, whatever the bytes.
//!
//! Run: `cargo test --release --features protocol --test proptest_roundtrip`.

use hvae::store::blob::{self, BlobError};
use hvae::{Activation, Likelihood, Posterior, Shape};
use proptest::prelude::*;

fn shape() -> impl Strategy<Value = Shape> {
    (
        1usize..=12,
        prop::collection::vec(1usize..=8, 1..=4),
        2usize..=6,
        1usize..=12,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(d, hidden, m, k, tanh, ps, bern)| {
            let mut s = Shape::new(d, &hidden, m, k);
            if tanh {
                s = s.with_activation(Activation::Tanh);
            }
            if ps {
                s = s.with_posterior(Posterior::PowerSpherical);
            }
            if bern {
                s = s.with_likelihood(Likelihood::Bernoulli);
            }
            s
        })
}

/// Any finite `f32`, the awkward ones included (`-0.0`, subnormals, extremes).
fn finite() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
        1 => Just(f32::MAX),
        1 => Just(f32::MIN),
    ]
}

/// A shape with finite parameters for it.
fn model() -> impl Strategy<Value = (Shape, Vec<f32>)> {
    shape().prop_flat_map(|s| {
        (
            Just(s),
            prop::collection::vec(finite(), s.param_len()..=s.param_len()),
        )
    })
}

fn blob_of(s: &Shape, p: &[f32]) -> Vec<u8> {
    let mut b = vec![0u8; blob::blob_len(s)];
    assert_eq!(blob::write(s, p, &mut b).unwrap(), b.len());
    b
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn blob_round_trip_is_bit_exact((s, p) in model()) {
        let b = blob_of(&s, &p);
        prop_assert_eq!(blob::read_shape(&b).unwrap(), s);
        let mut back = vec![1.0f32; p.len()];
        let crc = blob::read_params(&b, &s, &mut back).unwrap();
        prop_assert_eq!(bits(&back), bits(&p));
        prop_assert_eq!(crc, blob::crc32(&b[..b.len() - 4]));
        // Writing what was read gives the same bytes.
        prop_assert_eq!(blob_of(&s, &back), b);
    }

    #[test]
    fn blob_f64_round_trip_rounds_once((s, p) in model(), scale in 0.5f64..2.0) {
        let wide: Vec<f64> = p.iter().map(|&x| (x as f64 * scale).clamp(-1e38, 1e38)).collect();
        let mut b = vec![0u8; blob::blob_len(&s)];
        blob::write(&s, &wide, &mut b).unwrap();
        let mut back = vec![0f64; wide.len()];
        blob::read_params(&b, &s, &mut back).unwrap();
        for (x, y) in wide.iter().zip(&back) {
            prop_assert_eq!((*x as f32 as f64).to_bits(), y.to_bits());
        }
    }

    #[test]
    fn any_single_byte_change_is_rejected((s, p) in model(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let mut b = blob_of(&s, &p);
        let i = at.index(b.len());
        b[i] ^= x;
        let mut back = vec![0f32; p.len()];
        prop_assert!(blob::read_params(&b, &s, &mut back).is_err());
        // and nothing was loaded.
        prop_assert!(back.iter().all(|v| v.to_bits() == 0));
    }

    #[test]
    fn truncated_or_extended_blobs_are_rejected((s, p) in model(), cut in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let b = blob_of(&s, &p);
        let n = cut.index(b.len());
        let short = blob::read_shape(&b[..n]);
        prop_assert!(short.is_err());
        let mut long = b.clone();
        long.extend_from_slice(&extra);
        prop_assert_eq!(blob::read_shape(&long).err(), Some(BlobError::TrailingBytes));
    }

    #[test]
    fn blob_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = blob::read_shape(&bytes);
        let s = Shape::new(4, &[6], 3, 2);
        let mut p = vec![0f32; s.param_len()];
        if blob::read_params(&bytes, &s, &mut p).is_err() {
            prop_assert!(p.iter().all(|v| v.to_bits() == 0));
        }
    }

    #[test]
    fn blob_parser_never_panics_on_a_valid_header_with_garbage(
        (s, p) in model(),
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        // A real header (so parsing goes past the magic) followed by anything.
        let b = blob_of(&s, &p);
        let mut bytes = b[..blob::HEADER_LEN].to_vec();
        bytes.extend_from_slice(&tail);
        let _ = blob::read_shape(&bytes);
        let mut q = vec![0f32; p.len()];
        let _ = blob::read_params(&bytes, &s, &mut q);
    }
}

mod protocol {
    use super::{finite, shape};
    use heapless::Vec as HVec;
    use hvae::protocol::{
        self, borrowed, CentreChange, DeviceInfo, ErrorCode, FrameDecoder, Request, Response,
        TrainOptimiser, TrainScope, TrainSettings, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
    };
    use proptest::prelude::*;

    fn floats<const N: usize>(max: usize) -> impl Strategy<Value = HVec<f32, N>> {
        prop::collection::vec(finite(), 0..=max.min(N)).prop_map(|v| v.into_iter().collect())
    }

    fn settings() -> impl Strategy<Value = Option<TrainSettings>> {
        prop::option::of(
            (
                prop_oneof![
                    Just(TrainScope::Full),
                    Just(TrainScope::EncoderAndSegmenter),
                    Just(TrainScope::SegmenterOnly),
                    Just(TrainScope::SegmenterAndNormalisation)
                ],
                prop_oneof![
                    Just(TrainOptimiser::Adam),
                    Just(TrainOptimiser::Factored),
                    Just(TrainOptimiser::FactoredRms),
                    finite().prop_map(|momentum| TrainOptimiser::Sgd { momentum }),
                    (any::<u16>(), finite(), any::<u8>(), any::<u8>()).prop_map(
                        |(memory, spawn_above, spawn_window, spawn_count)| {
                            TrainOptimiser::OnlineKMeans {
                                memory,
                                spawn_above,
                                spawn_window,
                                spawn_count,
                            }
                        }
                    )
                ],
                finite(),
                any::<u8>(),
            )
                .prop_map(|(scope, optimiser, lr, batch)| TrainSettings {
                    scope,
                    optimiser,
                    lr,
                    batch,
                }),
        )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Info),
            Just(Request::Checkpoint),
            (
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..=256),
                any::<bool>()
            )
                .prop_map(|(offset, bytes, last)| Request::LoadWeights {
                    offset,
                    bytes: bytes.into_iter().collect(),
                    last
                }),
            floats(256).prop_map(|sample| Request::Segment { sample }),
            floats(256).prop_map(|sample| Request::Encode { sample }),
            (any::<u32>(), any::<u16>())
                .prop_map(|(offset, count)| Request::ReadWeights { offset, count }),
            (floats(256), any::<u16>(), settings()).prop_map(|(samples, steps, settings)| {
                Request::TrainBatch {
                    samples,
                    steps,
                    settings,
                }
            }),
        ]
    }

    fn error_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::Oversized),
            Just(ErrorCode::Malformed),
            Just(ErrorCode::NonFiniteInput),
            Just(ErrorCode::LoadLength),
            Just(ErrorCode::Internal),
            any::<u32>().prop_map(|expected| ErrorCode::LoadOrder { expected }),
            any::<u16>().prop_map(ErrorCode::UnsupportedVersion),
            (any::<u32>(), any::<u32>())
                .prop_map(|(stored, computed)| ErrorCode::BadCrc { stored, computed }),
            any::<u32>().prop_map(|index| ErrorCode::NonFiniteWeight { index }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Ack),
            error_code().prop_map(Response::Error),
            (shape(), any::<u32>(), any::<u32>(), 0usize..4096).prop_map(|(s, crc, caps, f)| {
                Response::Info(DeviceInfo::new(&s, s.param_len(), crc, f, caps))
            }),
            (any::<u8>(), floats(255), finite(), floats(64), finite()).prop_map(
                |(label, probs, cosine, mu, kappa)| Response::Segmented {
                    label,
                    probs,
                    cosine,
                    mu,
                    kappa
                }
            ),
            (floats(64), finite()).prop_map(|(mu, kappa)| Response::Encoded { mu, kappa }),
            (any::<u32>(), floats(64))
                .prop_map(|(offset, values)| Response::Weights { offset, values }),
            any::<u32>().prop_map(|weights_crc| Response::Loaded { weights_crc }),
            any::<u32>().prop_map(|weights_crc| Response::Checkpointed { weights_crc }),
            (any::<u32>(), any::<u32>(), finite()).prop_map(|(buffered, steps, loss)| {
                Response::Trained {
                    buffered,
                    steps,
                    loss,
                }
            }),
            (any::<u8>(), 0u8..3, any::<u8>(), any::<u16>(), any::<u8>()).prop_map(
                |(slot, c, into, sample, in_use)| Response::Centre {
                    slot,
                    change: match c {
                        0 => CentreChange::Spawned,
                        1 => CentreChange::Starved,
                        _ => CentreChange::MergedInto(into),
                    },
                    sample,
                    in_use,
                }
            ),
        ]
    }

    /// Encodes, then decodes the frame both in place and byte by byte through a
    /// fixed-size decoder as a device or the host tool would.
    fn round_trip<T, const N: usize>(msg: &T) -> Result<(), TestCaseError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + core::fmt::Debug,
    {
        let mut buf = vec![0u8; 8192];
        let frame = protocol::encode(msg, &mut buf).unwrap().to_vec();
        prop_assert!(
            frame.len() <= N + 1,
            "frame of {} bytes > {}",
            frame.len(),
            N
        );
        prop_assert_eq!(*frame.last().unwrap(), 0u8);
        prop_assert!(!frame[..frame.len() - 1].contains(&0));
        let mut body = frame[..frame.len() - 1].to_vec();
        prop_assert_eq!(&protocol::decode::<T>(&mut body).unwrap(), msg);
        let mut dec = FrameDecoder::<N>::new();
        let mut got = None;
        for (i, &b) in frame.iter().enumerate() {
            if let Some(r) = dec.push::<T>(b) {
                prop_assert_eq!(i, frame.len() - 1);
                got = Some(r.unwrap());
            }
        }
        prop_assert_eq!(got.as_ref(), Some(msg));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn requests_round_trip(r in request()) {
            round_trip::<_, MAX_REQUEST_FRAME>(&r)?;
        }

        #[test]
        fn responses_round_trip(r in response()) {
            round_trip::<_, MAX_RESPONSE_FRAME>(&r)?;
        }

        #[test]
        fn a_stream_of_frames_decodes_in_order(rs in prop::collection::vec(request(), 1..6)) {
            let mut stream = Vec::new();
            for r in &rs {
                let mut buf = vec![0u8; 8192];
                stream.extend_from_slice(protocol::encode(r, &mut buf).unwrap());
            }
            let mut dec = FrameDecoder::<MAX_REQUEST_FRAME>::new();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let (n, r) = dec.feed::<Request>(rest);
                if let Some(r) = r {
                    got.push(r.unwrap());
                }
                rest = &rest[n..];
            }
            prop_assert_eq!(got, rs);
        }

        #[test]
        fn borrowed_parser_reads_every_request(r in request()) {
            let mut buf = vec![0u8; 8192];
            let frame = protocol::encode(&r, &mut buf).unwrap().to_vec();
            let mut dec = FrameDecoder::<MAX_REQUEST_FRAME>::new();
            let mut got = None;
            for &b in &frame {
                if let Some(body) = dec.push_frame(b) {
                    got = Some(body.and_then(borrowed::parse).map(|q| q.to_request()));
                }
            }
            prop_assert_eq!(got, Some(Ok(r)));
        }

        #[test]
        fn borrowed_parser_agrees_with_the_decoder_on_any_bytes(
            tag in 0u8..8,
            bytes in prop::collection::vec(any::<u8>(), 0..1200),
        ) {
            // A valid tag first, so that most cases reach a variant's fields.
            let mut body = vec![tag];
            body.extend_from_slice(&bytes);
            let mine = borrowed::parse(&body).map(|q| q.to_request());
            let theirs = protocol::decode_body::<Request>(&body);
            match (mine, theirs) {
                (Ok(a), Ok(b)) => {
                    // Compared by encoding: NaN payloads are equal bit for bit.
                    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
                    prop_assert_eq!(
                        protocol::encode(&a, &mut x).unwrap().to_vec(),
                        protocol::encode(&b, &mut y).unwrap().to_vec()
                    );
                }
                (a, b) => prop_assert_eq!(a, b),
            }
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let mut copy = bytes.clone();
            let _ = protocol::decode::<Request>(&mut copy);
            let mut copy = bytes.clone();
            let _ = protocol::decode::<Response>(&mut copy);
            let mut req = FrameDecoder::<MAX_REQUEST_FRAME>::new();
            let mut resp = FrameDecoder::<64>::new();
            for &b in &bytes {
                let _ = req.push::<Request>(b);
                let _ = resp.push::<Response>(b);
                prop_assert!(resp.pending() <= 64);
            }
        }

        #[test]
        fn garbage_between_frames_costs_only_the_damaged_frame(
            r in request(),
            junk in prop::collection::vec(1u8..=255, 0..40),
        ) {
            // Junk then a delimiter (one bad frame), then a good frame: the good one
            // still decodes.
            let mut stream = junk.clone();
            stream.push(0);
            let mut buf = vec![0u8; 8192];
            stream.extend_from_slice(protocol::encode(&r, &mut buf).unwrap());
            let mut dec = FrameDecoder::<MAX_REQUEST_FRAME>::new();
            let mut last = None;
            for &b in &stream {
                if let Some(x) = dec.push::<Request>(b) {
                    last = Some(x);
                }
            }
            prop_assert_eq!(last, Some(Ok(r)));
        }
    }
}
