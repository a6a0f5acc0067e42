//! `protocol::answer`: a `Segment` / `Encode` request of `n` samples gets `n` responses
//! in order, the same with and without the pair kernels, each equal to the answer to
//! the sample alone; a bad sample gets its error alone; a request that is not a whole
//! number of samples gets one `InputLength`.

use hvae::protocol::answer::{answer, Ask};
use hvae::protocol::{ErrorCode, Response};
use hvae::Model;
use hvae::Shape;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const S: Shape = Shape::new(12, &[16], 4, 5);

fn model() -> Model<f32, Vec<f32>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let mut m = Model::new(S, vec![0.0f32; S.param_len()]).unwrap();
    m.init(&mut rng);
    m
}

fn samples(n: usize) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
    (0..n * S.input)
        .map(|_| hvae::dist::rng::standard_normal::<f32, _>(&mut rng))
        .collect()
}

/// Every response `answer` emits for the samples `xs`.
fn answers<const PAIRS: bool>(ask: Ask, m: &Model<f32, Vec<f32>>, xs: &[f32]) -> Vec<Response> {
    let mut work = vec![0.0f32; 2 * S.work_len()];
    let mut out = Response::Ack;
    let mut got = Vec::new();
    answer::<_, PAIRS>(ask, m, xs, &mut work, &mut out, &mut |r| {
        got.push(r.clone())
    });
    got
}

fn segment_all<const PAIRS: bool>(m: &Model<f32, Vec<f32>>, xs: &[f32]) -> Vec<Response> {
    answers::<PAIRS>(Ask::Segment, m, xs)
}

fn encode_all<const PAIRS: bool>(m: &Model<f32, Vec<f32>>, xs: &[f32]) -> Vec<Response> {
    answers::<PAIRS>(Ask::Encode, m, xs)
}

#[test]
fn one_response_per_sample_each_as_alone() {
    let m = model();
    for n in 1..=5 {
        let mut xs = samples(n);
        if n >= 3 {
            xs[2 * S.input + 1] = f32::INFINITY;
        }
        let alone: Vec<Response> = xs
            .chunks(S.input)
            .flat_map(|x| segment_all::<false>(&m, x))
            .collect();
        assert_eq!(alone.len(), n);
        if n >= 3 {
            assert_eq!(alone[2], Response::Error(ErrorCode::NonFiniteInput));
            assert!(matches!(alone[1], Response::Segmented { .. }));
        }
        assert_eq!(
            segment_all::<false>(&m, &xs),
            alone,
            "n = {n}, one at a time"
        );
        assert_eq!(segment_all::<true>(&m, &xs), alone, "n = {n}, pairs");
        let alone: Vec<Response> = xs
            .chunks(S.input)
            .flat_map(|x| encode_all::<false>(&m, x))
            .collect();
        assert_eq!(encode_all::<false>(&m, &xs), alone, "n = {n}");
        assert_eq!(encode_all::<true>(&m, &xs), alone, "n = {n}");
        // The segment answers hold the model's own outputs.
        let mut work = vec![0.0f32; S.work_len()];
        let s = m.segment(&xs[..S.input], &mut work).unwrap();
        assert_eq!(
            segment_all::<true>(&m, &xs)[0],
            Response::segmented(&s).unwrap()
        );
    }
}

#[test]
fn a_request_that_is_not_whole_samples_gets_one_error() {
    let m = model();
    let xs = samples(2);
    let one = vec![Response::Error(ErrorCode::InputLength)];
    for bad in [&[][..], &xs[..S.input - 1], &xs[..S.input + 1]] {
        assert_eq!(segment_all::<true>(&m, bad), one);
        assert_eq!(segment_all::<false>(&m, bad), one);
        assert_eq!(encode_all::<true>(&m, bad), one);
        assert_eq!(encode_all::<false>(&m, bad), one);
    }
    // A workspace too short for one sample: one error for the request, with and
    // without pairs, for both requests.
    let short = vec![Response::Error(ErrorCode::from(
        hvae::infer::model::InferError::BufferLength,
    ))];
    let mut work = vec![0.0f32; S.work_len() - 1];
    let mut out = Response::Ack;
    for pairs in [false, true] {
        for ask in [Ask::Segment, Ask::Encode] {
            let mut got = Vec::new();
            let mut emit = |r: &Response| got.push(r.clone());
            if pairs {
                answer::<_, true>(ask, &m, &xs, &mut work, &mut out, &mut emit)
            } else {
                answer::<_, false>(ask, &m, &xs, &mut work, &mut out, &mut emit)
            }
            assert_eq!(got, short, "pairs {pairs}, {ask:?}");
        }
    }
}

#[test]
fn max_samples_fits_the_frame() {
    use hvae::protocol::{
        encode, max_request_frame, max_samples, FrameDecoder, Request, MAX_SAMPLE,
    };
    // Real frames: the samples max_samples allows for a 1048-byte buffer (the
    // firmware's) encode within it and decode in a receiver of that size, with values
    // whose bytes COBS cannot shorten (no zero bytes) and with zeros.
    const FRAME: usize = 1048;
    for d in [1, 7, 64, 100] {
        let n = max_samples(FRAME, d);
        assert!(n >= 1);
        for v in [f32::from_bits(0x3f81_8181), 0.0] {
            let sample = heapless::Vec::from_slice(&vec![v; n * d]).unwrap();
            let mut buf = vec![0u8; 4 * FRAME];
            let frame = encode(&Request::Segment { sample }, &mut buf).unwrap();
            assert!(
                frame.len() <= FRAME,
                "d {d}: {n} samples take {}",
                frame.len()
            );
            let mut rx = FrameDecoder::<FRAME>::new();
            let (_, got) = rx.feed::<Request>(frame);
            assert!(matches!(got, Some(Ok(Request::Segment { .. }))), "d {d}");
        }
    }
    for d in [1, 7, 64, 100, 256] {
        for n in 1..=MAX_SAMPLE / d {
            let frame = max_request_frame(n * d);
            assert!(max_samples(frame, d) >= n, "d {d}, n {n}");
        }
    }
    assert_eq!(max_samples(max_request_frame(4 * 64), 64), 4);
    // The firmware's receive buffer (4 samples of 64, firmware/README.md).
    assert_eq!(max_request_frame(4 * 64), 1048);
    assert_eq!(max_samples(10, 64), 0);
    assert_eq!(max_samples(100_000, 64), MAX_SAMPLE / 64);
    assert_eq!(max_samples(100_000, 0), 0);
}

/// The int8 answers: one per sample, each [`QuantModel::segment`] / `encode` of the
/// sample alone; a bad sample gets its error alone; a request that is not whole samples
/// one `InputLength`.
#[test]
fn int8_answers_are_the_quant_models_values() {
    use hvae::infer::quant::{
        calibration_len, float_len, int_len, quantize, weight_len, Calibration, QuantModel,
    };
    let m = model();
    let mut cal = Calibration::new(&S, vec![0.0f32; calibration_len(&S)]).unwrap();
    let mut work = vec![0.0f32; S.work_len()];
    for x in samples(20).chunks(S.input) {
        cal.observe(&m, x, &mut work).unwrap();
    }
    let (mut w, mut n, mut f) = (
        vec![0i8; weight_len(&S)],
        vec![0i32; int_len(&S)],
        vec![0.0f32; float_len(&S)],
    );
    quantize(&m, &cal, &mut w, &mut n, &mut f).unwrap();
    let q = QuantModel::new(S, w, n, f).unwrap();
    let mut xs = samples(3);
    xs[S.input + 2] = f32::NAN;
    let mut out = Response::Ack;
    let (mut seg, mut enc) = (Vec::new(), Vec::new());
    answer::<_, false>(Ask::Segment, &q, &xs, &mut work, &mut out, &mut |r| {
        seg.push(r.clone())
    });
    answer::<_, false>(Ask::Encode, &q, &xs, &mut work, &mut out, &mut |r| {
        enc.push(r.clone())
    });
    assert_eq!((seg.len(), enc.len()), (3, 3));
    for (i, x) in xs.chunks(S.input).enumerate() {
        if i == 1 {
            assert_eq!(seg[i], Response::Error(ErrorCode::NonFiniteInput));
            assert_eq!(enc[i], Response::Error(ErrorCode::NonFiniteInput));
            continue;
        }
        // The model's own outputs (tests/protocol.rs: `Response::segmented` carries
        // them), bit for bit.
        let s = q.segment(x, &mut work).unwrap();
        let want = Response::segmented(&s).unwrap();
        assert_eq!(frame(&seg[i]), frame(&want), "{:?}", seg[i]);
        let e = q.encode(x, &mut work).unwrap();
        let Response::Encoded { mu, kappa } = &enc[i] else {
            panic!("{:?}", enc[i]);
        };
        assert_eq!(kappa.to_bits(), e.kappa.to_bits());
        assert!(mu
            .iter()
            .zip(e.mu.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    let mut got = Vec::new();
    let xs = &xs[..S.input + 1];
    answer::<_, false>(Ask::Segment, &q, xs, &mut work, &mut out, &mut |r| {
        got.push(r.clone())
    });
    assert_eq!(got, vec![Response::Error(ErrorCode::InputLength)]);
}

/// The frame of `r`: its values bit for bit (`==` on `f32` takes `-0.0` for `0.0`).
fn frame(r: &Response) -> Vec<u8> {
    let mut buf = vec![0u8; hvae::protocol::MAX_RESPONSE_FRAME];
    hvae::protocol::encode(r, &mut buf).unwrap().to_vec()
}
