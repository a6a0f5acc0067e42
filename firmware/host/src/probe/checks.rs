//! The conformance checks of the `cluster` firmware, in the order they run: each is a
//! function of the [`Fixture`]; later checks rely on the weights the loading checks left
//! on the device.

use super::fixture::{blob_of, ensure, sample, Failure, Fixture, Int8Weights, Weights};
use hvae::protocol::answer::{answer, Ask};
use hvae::protocol::{encode, ErrorCode, Request, Response, MAX_CHUNK};

/// What a check that did not fail says.
pub enum Pass {
    /// It passed; a figure to print with its name (or nothing).
    Ok(String),
    /// It does not apply to this run (no budget given).
    NotApplicable(&'static str),
}

/// A check's result.
pub type Outcome = Result<Pass, Failure>;

/// A check: its name (what it establishes) and its function.
pub type Check = (&'static str, fn(&mut Fixture) -> Outcome);

/// Every check, in order, in groups.
pub const CHECKS: &[&[Check]] = &[F32_MODEL, REQUESTS, BAD_FRAMES, WEIGHTS, SIZES];

/// The checks of the int8 service (`cluster_int8`, `probe --int8 BLOB`): its answers
/// bit for bit against the host's [`hvae::QuantModel`], the requests it does not serve,
/// the checks that do not depend on the model, and loading int8 weights.
pub const CHECKS_INT8: &[&[Check]] = &[INT8_MODEL, REQUESTS, BAD_FRAMES, INT8_WEIGHTS, SIZES];

/// The checks of the int8 service without weight slots (`cluster_int8_fixed`: no
/// `LoadWeights` among its capabilities): [`CHECKS_INT8`] with a load refused instead
/// of the loads.
pub const CHECKS_INT8_FIXED: &[&[Check]] = &[
    INT8_MODEL,
    REQUESTS,
    &[(
        "LoadWeights and ReadWeights (weights compiled in): Unsupported",
        weights_unsupported,
    )],
    BAD_FRAMES,
    SIZES,
];

#[rustfmt::skip] // a table: one check a line
const F32_MODEL: &[Check] = &[
    ("Info: the model's shape, CRC and the inference prefix only", info),
    ("Segment: 24 inputs, labels equal, outputs within 1e-5 of the host", segment),
    ("Encode: mu and kappa as on the host", encode_one),
];

#[rustfmt::skip] // a table: one check a line
const INT8_MODEL: &[Check] = &[
    ("Info: the model's shape, the int8 blob's version and CRC", info_int8),
    ("Segment: 24 inputs, the same bits as the host's QuantModel", segment_int8),
    ("Encode: 24 inputs, the same bits as the host's QuantModel", encode_int8),
];

/// Loading int8 weights: all or nothing, then another model's exact answers.
#[rustfmt::skip] // a table: one check a line
const INT8_WEIGHTS: &[Check] = &[
    ("ReadWeights (no f32 values) and Checkpoint: Unsupported", int8_read_unsupported),
    ("int8 load of a blob with a flipped bit: BadCrc", int8_load_flipped_bit),
    ("int8 load of an f32 blob: UnsupportedVersion(1)", int8_load_f32_blob),
    ("int8 blob of another shape: ShapeMismatch", int8_load_other_shape),
    ("int8 blob with a weight of -128 (CRC fixed): OutOfRange", int8_load_bad_weight),
    ("after the failed loads the old int8 weights are in use, bit for bit", int8_old_kept),
    ("load of another int8 model: Loaded with its CRC", int8_load_new),
    ("the device now answers with it, bit for bit", int8_new_answers),
    ("load of the original int8 model again, answered with it", int8_load_original),
];

/// Requests any inference firmware answers alike: several samples in one, bad lengths
/// and values, training it does not serve.
#[rustfmt::skip] // a table: one check a line
const REQUESTS: &[Check] = &[
    ("Info: the receive buffer takes several samples per request", capacity),
    ("Segment of several samples: one answer each, as the sample alone", segment_batch),
    ("... a NaN in the second sample: NonFiniteInput for it, the others answered", segment_batch_nan),
    ("Encode of several samples: one answer each, as the sample alone", encode_batch),
    ("Segment of a sample and a bit: one InputLength answer", segment_and_a_bit),
    ("Segment of D-1 values: InputLength", segment_short),
    ("Encode with a NaN: NonFiniteInput", encode_nan),
    ("TrainBatch on the inference firmware: Unsupported", train_unsupported),
];

/// Frames the protocol refuses, then the service again.
#[rustfmt::skip] // a table: one check a line
const BAD_FRAMES: &[Check] = &[
    ("frame that is not COBS: BadEncoding", frame_not_cobs),
    ("unknown request variant: Malformed", unknown_variant),
    ("request cut in half: Truncated", request_cut),
    ("Info with a trailing byte: TrailingBytes", trailing_byte),
    ("5000-byte frame: Oversized (one answer)", oversized),
    ("serves again after the bad frames", serves_again),
];

/// Reading, loading and checkpointing weights (the `f32` service).
#[rustfmt::skip] // a table: one check a line
const WEIGHTS: &[Check] = &[
    ("ReadWeights: the inference prefix, bit-exact", read_weights),
    ("ReadWeights past the prefix: OutOfRange", read_past_prefix),
    ("load of a blob with a flipped bit: BadCrc", load_flipped_bit),
    ("chunk without a start: LoadOrder", load_without_start),
    ("blob of another shape: ShapeMismatch", load_other_shape),
    ("after the failed loads the old weights are in use", old_weights_kept),
    ("... and answer as before", old_weights_answer),
    ("load of new weights: Loaded with their CRC", load_new),
    ("the device now answers with the new weights", new_weights_answer),
    ("ReadWeights: the new weights, bit-exact", read_new_weights),
    ("Checkpoint: the new weights' CRC", checkpoint),
    ("load of the original weights again", load_original),
    ("... answered with them", original_weights_answer),
];

/// The image's flash and RAM against the ELF and the budgets.
#[rustfmt::skip] // a table: one check a line
const SIZES: &[Check] = &[
    ("the device's flash and static RAM equal the ELF's", sizes),
    ("stack peak measured", stack_peak),
    ("flash within the budget", flash_budget),
    ("RAM (static + peak stack) within the budget", ram_budget),
];

fn pass() -> Outcome {
    Ok(Pass::Ok(String::new()))
}

/// Passes if `got` is `want`.
fn answer_is(got: &Response, want: &Response) -> Outcome {
    ensure(got == want, || format!("expected {want:?}, got {got:?}"))?;
    pass()
}

/// Passes if `got` is the error answer `want`.
fn error_answer(got: &Response, want: ErrorCode) -> Outcome {
    answer_is(got, &Response::Error(want))
}

/// The answer to a hand-made frame (`body` COBS-encoded, then the delimiter).
fn send_body(f: &mut Fixture, body: &[u8]) -> Result<Response, Failure> {
    let mut frame = vec![0u8; body.len() + body.len() / 254 + 2];
    let k = cobs::encode(body, &mut frame);
    frame.truncate(k);
    frame.push(0);
    f.dev.send_raw(&frame)?;
    Ok(f.dev.answer()?)
}

/// Passes if the outputs are within 1e-5 of the host's; says the largest difference.
fn within(err: f32) -> Outcome {
    ensure(err <= 1e-5, || format!("max error {err:e}"))?;
    Ok(Pass::Ok(format!("max relative error {err:e}")))
}

fn info(f: &mut Fixture) -> Outcome {
    // The session's start: a lone 0x00 flushes anything half-received, then Info.
    let info = f.dev.sync()?;
    f.set_info(info);
    ensure(
        info.shape.to_shape() == Some(f.shape)
            && info.weights_crc == f.crc
            && info.params_held as usize == f.shape.inference_param_len(),
        || format!("{info:?}"),
    )?;
    pass()
}

fn segment(f: &mut Fixture) -> Outcome {
    let n = f.xs.len();
    within(f.segments_against(Weights::Original, n)?)
}

fn encode_one(f: &mut Fixture) -> Outcome {
    let model = f.model()?;
    let mut work = vec![0.0f32; f.shape.work_len()];
    let e = model
        .encode(&f.xs[0], &mut work)
        .map_err(|e| e.to_string())?;
    let r = f.dev.exchange(&Request::Encode {
        sample: sample(&f.xs[0]),
    })?;
    ensure(
        matches!(&r, Response::Encoded { mu, kappa } if mu.iter().zip(e.mu).all(|(a, b)| (a - b).abs() <= 1e-5) && (kappa - e.kappa).abs() <= 1e-5 * e.kappa.max(1.0)),
        || format!("{r:?}"),
    )?;
    pass()
}

fn capacity(f: &mut Fixture) -> Outcome {
    let info = f.info()?;
    let per = hvae::protocol::max_samples(info.max_frame as usize, f.shape.input);
    ensure(per >= 2, || {
        format!("max_frame {} = {per} samples", info.max_frame)
    })?;
    Ok(Pass::Ok(format!("{per} samples")))
}

/// The answers to each of the first `n` inputs sent alone, as `request` makes them.
fn singles(
    f: &mut Fixture,
    n: usize,
    request: fn(&[f32]) -> Request,
) -> Result<Vec<Response>, Failure> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let req = request(&f.xs[i]);
        out.push(f.dev.exchange(&req)?);
    }
    Ok(out)
}

fn segment_request(x: &[f32]) -> Request {
    Request::Segment { sample: sample(x) }
}

fn encode_request(x: &[f32]) -> Request {
    Request::Encode { sample: sample(x) }
}

/// Batches: several samples per request, one answer each, the bits of single requests.
fn batch_as_singles(f: &mut Fixture, request: fn(&[f32]) -> Request) -> Outcome {
    let n = f.batch()?;
    let singles = singles(f, n, request)?;
    let answers = f.dev.answers(&request(&f.xs[..n].concat()), n)?;
    ensure(answers == singles, || format!("{answers:?}"))?;
    Ok(Pass::Ok(format!("{n} samples")))
}

fn segment_batch(f: &mut Fixture) -> Outcome {
    batch_as_singles(f, segment_request)
}

fn segment_batch_nan(f: &mut Fixture) -> Outcome {
    // A bad sample fails alone.
    let n = f.batch()?;
    let mut want = singles(f, n, segment_request)?;
    let mut batch: Vec<f32> = f.xs[..n].concat();
    batch[f.shape.input + 3] = f32::NAN;
    let answers = f.dev.answers(&segment_request(&batch), n)?;
    want[1] = Response::Error(ErrorCode::NonFiniteInput);
    ensure(answers == want, || format!("{answers:?}"))?;
    pass()
}

fn encode_batch(f: &mut Fixture) -> Outcome {
    batch_as_singles(f, encode_request)
}

fn segment_and_a_bit(f: &mut Fixture) -> Outcome {
    let r = f
        .dev
        .exchange(&segment_request(&f.xs[..2].concat()[..f.shape.input + 1]))?;
    error_answer(&r, ErrorCode::InputLength)
}

fn segment_short(f: &mut Fixture) -> Outcome {
    let r = f
        .dev
        .exchange(&segment_request(&f.xs[0][..f.shape.input - 1]))?;
    error_answer(&r, ErrorCode::InputLength)
}

fn encode_nan(f: &mut Fixture) -> Outcome {
    let mut bad = f.xs[0].clone();
    bad[5] = f32::NAN;
    let r = f.dev.exchange(&encode_request(&bad))?;
    error_answer(&r, ErrorCode::NonFiniteInput)
}

fn train_unsupported(f: &mut Fixture) -> Outcome {
    let r = f.dev.exchange(&Request::TrainBatch {
        samples: sample(&[]),
        steps: 1,
        settings: None,
    })?;
    error_answer(&r, ErrorCode::Unsupported)
}

// Bad frames: one error answer each, and the device keeps serving.

fn frame_not_cobs(f: &mut Fixture) -> Outcome {
    // COBS says 4 bytes follow, the frame ends after 1.
    f.dev.send_raw(&[0x05, 0x01, 0x00])?;
    let r = f.dev.answer()?;
    error_answer(&r, ErrorCode::BadEncoding)
}

fn unknown_variant(f: &mut Fixture) -> Outcome {
    let r = send_body(f, &[0x63])?; // request variant 99
    error_answer(&r, ErrorCode::Malformed)
}

fn request_cut(f: &mut Fixture) -> Outcome {
    // The first half of a Segment request's message, framed: a truncated request.
    let mut buf = [0u8; 1200];
    let full = encode(&segment_request(&f.xs[0]), &mut buf).map_err(|e| e.to_string())?;
    let mut body = full[..full.len() - 1].to_vec();
    let n = cobs::decode_in_place(&mut body).map_err(|_| "cobs".to_string())?;
    let r = send_body(f, &body[..n / 2])?;
    error_answer(&r, ErrorCode::Truncated)
}

fn trailing_byte(f: &mut Fixture) -> Outcome {
    let r = send_body(f, &[0x00, 0x07])?; // Info, then a byte too many
    error_answer(&r, ErrorCode::TrailingBytes)
}

fn oversized(f: &mut Fixture) -> Outcome {
    f.dev.send_raw(&vec![0x11u8; 5000])?;
    f.dev.send_raw(&[0])?;
    let r = f.dev.answer()?;
    error_answer(&r, ErrorCode::Oversized)
}

fn serves_again(f: &mut Fixture) -> Outcome {
    f.ask_info()?;
    pass()
}

// Weights: read back, bit-exact.

/// Passes if the device's inference prefix is `want`'s, bit for bit.
fn weights_are(f: &mut Fixture, want: Weights) -> Outcome {
    let got = f.dev.read_weights(f.shape.inference_param_len())?;
    let want = match want {
        Weights::Original => &f.params,
        Weights::New => &f.new_params,
    };
    ensure(
        got.iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        || "values differ".into(),
    )?;
    pass()
}

fn read_weights(f: &mut Fixture) -> Outcome {
    weights_are(f, Weights::Original)
}

fn read_past_prefix(f: &mut Fixture) -> Outcome {
    let r = f.dev.exchange(&Request::ReadWeights {
        offset: f.shape.inference_param_len() as u32,
        count: 1,
    })?;
    error_answer(&r, ErrorCode::OutOfRange)
}

// Loading: all or nothing.

fn load_flipped_bit(f: &mut Fixture) -> Outcome {
    let blob = f.new_blob.clone();
    flipped_bit_refused(f, blob)
}

/// A load of `blob` with one bit flipped in its middle is refused by its CRC.
fn flipped_bit_refused(f: &mut Fixture, mut blob: Vec<u8>) -> Outcome {
    let mid = blob.len() / 2;
    blob[mid] ^= 0x40;
    let r = f.load(&blob)?;
    ensure(
        matches!(r, Response::Error(ErrorCode::BadCrc { .. })),
        || format!("{r:?}"),
    )?;
    pass()
}

fn load_without_start(f: &mut Fixture) -> Outcome {
    let r = f.dev.exchange(&Request::LoadWeights {
        offset: MAX_CHUNK as u32,
        bytes: heapless::Vec::from_slice(&f.new_blob[MAX_CHUNK..2 * MAX_CHUNK]).expect("chunk"),
        last: false,
    })?;
    error_answer(&r, ErrorCode::LoadOrder { expected: 0 })
}

fn load_other_shape(f: &mut Fixture) -> Outcome {
    let blob = f.new_blob.clone();
    other_shape_refused(f, blob)
}

/// A load of `blob` with K = 11 in its header is refused as another shape.
fn other_shape_refused(f: &mut Fixture, mut blob: Vec<u8>) -> Outcome {
    blob[40] = 11;
    let r = f.load(&blob)?;
    error_answer(&r, ErrorCode::ShapeMismatch)
}

fn old_weights_kept(f: &mut Fixture) -> Outcome {
    let info = f.ask_info()?;
    ensure(info.weights_crc == f.crc, || {
        format!("CRC {:#010x}", info.weights_crc)
    })?;
    pass()
}

fn old_weights_answer(f: &mut Fixture) -> Outcome {
    within(f.segments_against(Weights::Original, 4)?)
}

fn load_new(f: &mut Fixture) -> Outcome {
    let blob = f.new_blob.clone();
    let r = f.load(&blob)?;
    answer_is(
        &r,
        &Response::Loaded {
            weights_crc: f.new_crc,
        },
    )
}

fn new_weights_answer(f: &mut Fixture) -> Outcome {
    within(f.segments_against(Weights::New, 8)?)
}

fn read_new_weights(f: &mut Fixture) -> Outcome {
    weights_are(f, Weights::New)
}

fn checkpoint(f: &mut Fixture) -> Outcome {
    let r = f.dev.exchange(&Request::Checkpoint)?;
    answer_is(
        &r,
        &Response::Checkpointed {
            weights_crc: f.new_crc,
        },
    )
}

fn load_original(f: &mut Fixture) -> Outcome {
    // Back to the original, through the other slot.
    let blob = blob_of(&f.shape, &f.params)?;
    let r = f.load(&blob)?;
    answer_is(&r, &Response::Loaded { weights_crc: f.crc })
}

fn original_weights_answer(f: &mut Fixture) -> Outcome {
    within(f.segments_against(Weights::Original, 4)?)
}

// The device's own figures, after every request above has run.

fn sizes(f: &mut Fixture) -> Outcome {
    let info = f.ask_info()?;
    let ram = info.ram_static + info.stack_peak;
    println!(
        "  device: flash {} B, RAM static {} B + peak stack {} B = {} B",
        info.flash_used, info.ram_static, info.stack_peak, ram
    );
    // One line for run-tests.sh's summary.
    println!(
        "HVAE_DEVICE_FIGURES flash={} ram_static={} stack_peak={} ram={}",
        info.flash_used, info.ram_static, info.stack_peak, ram
    );
    let sizes = crate::elf::sizes(&f.elf)?;
    ensure(
        u64::from(info.flash_used) == sizes.flash() && u64::from(info.ram_static) == sizes.ram(),
        || format!("ELF: flash {} RAM {}", sizes.flash(), sizes.ram()),
    )?;
    pass()
}

fn stack_peak(f: &mut Fixture) -> Outcome {
    let info = f.ask_info()?;
    ensure(info.stack_peak > 0, || "0".into())?;
    pass()
}

fn flash_budget(f: &mut Fixture) -> Outcome {
    let Some(b) = f.flash_budget else {
        return Ok(Pass::NotApplicable("no --flash-budget"));
    };
    let flash = f.ask_info()?.flash_used;
    ensure(flash <= b, || format!("flash {flash} over budget {b}"))?;
    Ok(Pass::Ok(format!("flash {flash} <= budget {b}")))
}

fn ram_budget(f: &mut Fixture) -> Outcome {
    let Some(b) = f.ram_budget else {
        return Ok(Pass::NotApplicable("no --ram-budget"));
    };
    let info = f.ask_info()?;
    let ram = info.ram_static + info.stack_peak;
    ensure(ram <= b, || format!("RAM {ram} over budget {b}"))?;
    Ok(Pass::Ok(format!("RAM {ram} <= budget {b}")))
}

fn info_int8(f: &mut Fixture) -> Outcome {
    let info = f.dev.sync()?;
    f.set_info(info);
    let q = f.int8()?;
    let held = q.weights().len() + q.ints().len() + q.floats().len();
    let crc = f.int8_crc;
    ensure(
        info.shape.to_shape() == Some(f.shape)
            && info.blob == hvae::store::blob::VERSION_INT8
            && info.weights_crc == crc
            && info.params_held as usize == held,
        || format!("{info:?}"),
    )?;
    pass()
}

/// The device's answers to each input alone, `request` made, against `want`'s on the
/// host: the same responses, bit for bit.
fn int8_against(
    f: &mut Fixture,
    request: fn(&[f32]) -> Request,
    want: impl Fn(&hvae::QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>, &[f32], &mut Response),
) -> Outcome {
    int8_answers(f, Int8Weights::Original, f.xs.len(), request, want)
}

/// [`int8_against`] with the int8 model `which`, on the first `n` inputs.
fn int8_answers(
    f: &mut Fixture,
    which: Int8Weights,
    n: usize,
    request: fn(&[f32]) -> Request,
    want: impl Fn(&hvae::QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>, &[f32], &mut Response),
) -> Outcome {
    let (q, _, _) = f.int8_of(which)?;
    let mut out = Response::Ack;
    let n = n.min(f.xs.len());
    for i in 0..n {
        want(&q, &f.xs[i], &mut out);
        let got = f.dev.exchange(&request(&f.xs[i]))?;
        // `Response`'s equality is the values'; the bits are compared through the frame.
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        let same = match (encode(&got, &mut a), encode(&out, &mut b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        ensure(same, || format!("input {i}: device {got:?}, host {out:?}"))?;
    }
    Ok(Pass::Ok(format!("{n} inputs bit-exact")))
}

/// The host's answer to `ask` of `x` with `q`.
fn int8_answer(
    ask: Ask,
    q: &hvae::QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>,
    x: &[f32],
    out: &mut Response,
) {
    let mut work = vec![0.0f32; q.work_len()];
    answer::<_, false>(ask, q, x, &mut work, &mut Response::Ack, &mut |r| {
        *out = r.clone()
    });
}

/// The host's answer to `Segment` of `x` with `q`.
fn int8_segment(q: &hvae::QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>, x: &[f32], out: &mut Response) {
    int8_answer(Ask::Segment, q, x, out)
}

fn segment_int8(f: &mut Fixture) -> Outcome {
    int8_against(f, segment_request, int8_segment)
}

fn encode_int8(f: &mut Fixture) -> Outcome {
    int8_against(f, encode_request, |q, x, out| {
        int8_answer(Ask::Encode, q, x, out)
    })
}

fn weights_unsupported(f: &mut Fixture) -> Outcome {
    read_weights_unsupported(f)?;
    let (_, blob, _) = f.int8_of(Int8Weights::New)?;
    let r = f.dev.exchange(&Request::LoadWeights {
        offset: 0,
        bytes: heapless::Vec::from_slice(&blob[..MAX_CHUNK]).expect("chunk"),
        last: false,
    })?;
    error_answer(&r, ErrorCode::Unsupported)
}

// Loading int8 weights: all or nothing.

/// A `ReadWeights` request is refused as unsupported (an int8 image has no `f32`
/// weights to read).
fn read_weights_unsupported(f: &mut Fixture) -> Result<(), Failure> {
    let r = f.dev.exchange(&Request::ReadWeights {
        offset: 0,
        count: 4,
    })?;
    ensure(r == Response::Error(ErrorCode::Unsupported), || {
        format!("ReadWeights: {r:?}")
    })
}

fn int8_read_unsupported(f: &mut Fixture) -> Outcome {
    read_weights_unsupported(f)?;
    let r = f.dev.exchange(&Request::Checkpoint)?;
    error_answer(&r, ErrorCode::Unsupported)
}

fn int8_load_flipped_bit(f: &mut Fixture) -> Outcome {
    let (_, blob, _) = f.int8_of(Int8Weights::New)?;
    flipped_bit_refused(f, blob)
}

fn int8_load_f32_blob(f: &mut Fixture) -> Outcome {
    let blob = f.new_blob.clone();
    let r = f.load(&blob)?;
    error_answer(&r, ErrorCode::UnsupportedVersion(1))
}

fn int8_load_other_shape(f: &mut Fixture) -> Outcome {
    let (_, blob, _) = f.int8_of(Int8Weights::New)?;
    other_shape_refused(f, blob)
}

fn int8_load_bad_weight(f: &mut Fixture) -> Outcome {
    let (_, mut bad, _) = f.int8_of(Int8Weights::New)?;
    bad[hvae::store::blob::HEADER_LEN_INT8] = 0x80;
    let n = bad.len() - 4;
    let crc = hvae::store::blob::crc32(&bad[..n]);
    bad[n..].copy_from_slice(&crc.to_le_bytes());
    let r = f.load(&bad)?;
    error_answer(&r, ErrorCode::OutOfRange)
}

/// Passes if the device reports the CRC of the int8 model `which` and answers `Segment`
/// as it, bit for bit, on `n` inputs.
fn int8_in_use(f: &mut Fixture, which: Int8Weights, n: usize) -> Outcome {
    let (_, _, crc) = f.int8_of(which)?;
    let info = f.ask_info()?;
    ensure(info.weights_crc == crc, || {
        format!("CRC {:#010x}, expected {crc:#010x}", info.weights_crc)
    })?;
    int8_answers(f, which, n, segment_request, int8_segment)
}

fn int8_old_kept(f: &mut Fixture) -> Outcome {
    int8_in_use(f, Int8Weights::Original, 4)
}

fn int8_load_new(f: &mut Fixture) -> Outcome {
    let (_, blob, crc) = f.int8_of(Int8Weights::New)?;
    let r = f.load(&blob)?;
    answer_is(&r, &Response::Loaded { weights_crc: crc })
}

fn int8_new_answers(f: &mut Fixture) -> Outcome {
    // The two models answer differently (else this check could not tell them apart).
    let (old, _, _) = f.int8_of(Int8Weights::Original)?;
    let (new, _, _) = f.int8_of(Int8Weights::New)?;
    let differ = f.xs.iter().take(8).any(|x| {
        let (mut a, mut b) = (Response::Ack, Response::Ack);
        int8_segment(&old, x, &mut a);
        int8_segment(&new, x, &mut b);
        a != b
    });
    ensure(differ, || "the two int8 models answer alike".into())?;
    int8_in_use(f, Int8Weights::New, 8)?;
    int8_answers(f, Int8Weights::New, 8, encode_request, |q, x, out| {
        int8_answer(Ask::Encode, q, x, out)
    })
}

fn int8_load_original(f: &mut Fixture) -> Outcome {
    // Back to the original, through the other slot.
    let (_, blob, crc) = f.int8_of(Int8Weights::Original)?;
    let r = f.load(&blob)?;
    answer_is(&r, &Response::Loaded { weights_crc: crc })?;
    int8_in_use(f, Int8Weights::Original, 4)
}
