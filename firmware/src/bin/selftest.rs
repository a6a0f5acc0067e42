//! On-target tests: run on the device (under qemu), log one line per check (defmt
//! `println!` through semihosting), and exit with status 0 only if every check passed.
//!
//! 1. Weights at boot: the compiled-in weights pass their CRC; one changed value fails it.
//! 2. Golden outputs: `segment` and `encode` of 16 digits rows equal the outputs the core
//!    computed on the host (`model/golden.rs`, written by `model/regen.sh`).
//! 3. Bad input: typed errors (wrong length, NaN, infinity), never a panic.
//! 4. Frames and requests: [`hvae::protocol::borrowed::parse`] agrees with the core's
//!    `protocol::decode::<Request>` on every request variant and on thousands of
//!    truncated and corrupted encodings; the receiver reports oversized and non-COBS
//!    frames once and resynchronises; the hard-coded internal-error frame is the core's.
//! 6. The checkpoint region as `embedded-storage` NOR flash: erase, write, read back,
//!    alignment and bounds errors (empty on the micro:bit).
//! 5. Weight slots through the service: a streamed blob is loaded into a slot and a
//!    simulated reboot ([`weights::boot`]) picks it; a blob with a bad CRC is refused and
//!    changes nothing; the newest of two slots wins; a corrupted slot is skipped.
//! 7. Kernels: the dense kernels this target runs ([`hvae::kernels`]: the assembly ones
//!    on the M4F) give the same bits as the portable ones, forward and backward, on
//!    every dense layer of the model (its weights; each activation; one and two inputs;
//!    non-finite inputs) and on random layers of every size up to 17 x 19 (every
//!    remainder of rows and inputs). The backward pass on the model's layers is checked
//!    on the M4F only (its gradient buffers need more stack than the micro:bit has; the
//!    micro:bit runs the portable kernels).
//! 8. The int8 kernels ([`hvae::kernels::dense_i8`] and `dense_i8_dequant`: the `smlad`
//!    assembly on the M4F, the Thumb-1 assembly on the micro:bit) give the same values as
//!    the portable ones on the int8 digits model's layers (its weights and channels,
//!    random inputs, each clamp), on random layers of 1..=9 rows and 0..=44 inputs
//!    (every remainder of pairs and blocks of four rows, of blocks of 8 and 32 inputs;
//!    weights aligned and not), on layers of 33..=71 rows (more than one call of the M0
//!    assembly) and 8..=64 inputs, random channels (every shift `0..=63`, the fast and
//!    the general requantisation, negative multipliers) and every int8 value (`-128`
//!    too).
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae::protocol::{ErrorCode, Request, Response, MAX_CHUNK};
use hvae::InferError;
use hvae_firmware::board::Flash;
use hvae_firmware::golden;
use hvae_firmware::inference::{self, InferEngine};
use hvae_firmware::rt;
use hvae_firmware::weights::int8::generated as int8;
use hvae_firmware::weights::{self, generated, Source, BLOB_CRC, COMPILED, HEADER, SHAPE};

// The golden outputs belong to one model: build the selftest with it.
const _: () = assert!(
    golden::BLOB_CRC == BLOB_CRC,
    "model/golden.rs was made for another model: run model/regen.sh, or build the selftest without HVAE_MODEL"
);

/// Counts and logs check results.
struct Checks {
    failed: u32,
    passed: u32,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
            defmt::println!("  ok   {=str}", what);
        } else {
            self.failed += 1;
            defmt::println!("  FAIL {=str}", what);
        }
    }

    /// Checks that an inference call was refused with `want`.
    fn refused<T>(&mut self, r: Result<T, InferError>, want: InferError, what: &str) {
        self.check(r.err() == Some(want), what);
    }
}

/// xorshift32: deterministic test inputs.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    /// Only the frame checks (mps2-an386 alone) draw bounded values.
    #[cfg(board = "mps2_an386")]
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
    fn i8(&mut self) -> i8 {
        self.next() as i8
    }
    /// A value in [-2, 2), with an occasional zero, negative zero or huge value.
    fn f32(&mut self) -> f32 {
        let v = self.next();
        match v % 64 {
            0 => 0.0,
            1 => -0.0,
            2 => 3.0e38,
            _ => (v >> 8) as f32 / (1u32 << 22) as f32 - 2.0,
        }
    }
}

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let mut c = Checks {
        failed: 0,
        passed: 0,
    };
    defmt::println!("selftest: weights at boot");
    boot_crc(&mut c);
    defmt::println!("selftest: golden outputs");
    golden_outputs(&mut c);
    defmt::println!("selftest: bad input");
    bad_input(&mut c);
    defmt::println!("selftest: frames and requests");
    // The comparison with the core's serde decoder needs more stack than the micro:bit's
    // 16 KiB RAM leaves (the decoder's temporaries, see `hvae::protocol::borrowed`). The
    // parser is target-independent code (both targets are 32-bit, which is what
    // postcard's length encoding depends on), checked on the M4F.
    #[cfg(board = "mps2_an386")]
    frames::frames(&mut c);
    #[cfg(board = "microbit")]
    defmt::println!("  skipped on the micro:bit (stack); run on mps2-an386");
    defmt::println!("selftest: weight slots");
    slots(&mut c);
    defmt::println!("selftest: int8 weight slots");
    int8_slots(&mut c);
    defmt::println!("selftest: checkpoint region (embedded-storage NorFlash)");
    nor_flash(&mut c);
    defmt::println!(
        "selftest: dense kernel ({=str}) against the portable one",
        hvae::kernels::KERNEL
    );
    kernels::kernels(&mut c);
    defmt::println!(
        "selftest: int8 dense kernel ({=str}) against the portable one",
        hvae::kernels::KERNEL_I8
    );
    kernels_i8::kernels_i8(&mut c);
    defmt::println!(
        "selftest: {=u32} passed, {=u32} failed; peak stack {=usize} B",
        c.passed,
        c.failed,
        rt::stack_peak()
    );
    rt::exit(c.failed == 0)
}

fn boot_crc(c: &mut Checks) {
    let a = weights::compiled();
    c.check(
        matches!(&a, Ok(a) if a.source == Source::Compiled && a.blob_crc == BLOB_CRC),
        "compiled-in weights pass the CRC check",
    );
    let b = weights::boot();
    c.check(
        matches!(&b, Ok(b) if b.source == Source::Compiled),
        "boot with empty slots runs the compiled-in weights",
    );
    let params = COMPILED.params();
    let flipped = params.iter().enumerate().map(|(i, &v)| {
        if i == 1000 {
            f32::from_bits(v.to_bits() ^ 1)
        } else {
            v
        }
    });
    c.check(
        weights::crc_of(flipped) != weights::PREFIX_CRC
            && weights::prefix_crc(params) == weights::PREFIX_CRC,
        "one flipped bit in the weights fails the CRC",
    );
    // The full blob's CRC, decoder included, from the exported values.
    c.check(
        weights::crc_of(generated::PARAMS.iter().copied()) == BLOB_CRC,
        "the exported parameters reproduce the blob CRC",
    );
}

fn close(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn golden_outputs(c: &mut Checks) {
    let model = &COMPILED;
    let mut work = [0.0f32; SHAPE.work_len()];
    let (mut labels, mut near, mut exact, mut total) = (true, true, 0u32, 0u32);
    for i in 0..golden::N_GOLDEN {
        match model.segment(&golden::SAMPLES[i], &mut work) {
            Ok(s) => {
                labels &= s.label == usize::from(golden::LABELS[i]);
                let pairs = s
                    .probs
                    .iter()
                    .zip(&golden::PROBS[i])
                    .chain(s.mu.iter().zip(&golden::MU[i]))
                    .chain([
                        (&s.cosine, &golden::COSINE[i]),
                        (&s.kappa, &golden::KAPPA[i]),
                    ]);
                for (a, b) in pairs {
                    total += 1;
                    exact += u32::from(a.to_bits() == b.to_bits());
                    near &= close(*a, *b);
                }
            }
            Err(_) => {
                labels = false;
                near = false;
            }
        }
    }
    c.check(labels, "segment: 16 labels equal the host's");
    c.check(
        near,
        "segment: probs, mu, cosine, kappa within 1e-6 of the host's",
    );
    defmt::println!("       {=u32} of {=u32} values bit-identical", exact, total);
    let mut ok = true;
    for i in 0..golden::N_GOLDEN {
        match model.encode(&golden::SAMPLES[i], &mut work) {
            Ok(e) => {
                ok &= e.mu.iter().zip(&golden::MU[i]).all(|(a, b)| close(*a, *b));
                ok &= close(e.kappa, golden::KAPPA[i]);
            }
            Err(_) => ok = false,
        }
    }
    c.check(ok, "encode: mu and kappa equal the host's");
}

fn bad_input(c: &mut Checks) {
    let model = &COMPILED;
    let mut work = [0.0f32; SHAPE.work_len()];
    let x = &golden::SAMPLES[0];
    c.refused(
        model.segment(&x[..SHAPE.input - 1], &mut work),
        InferError::InputLength,
        "segment of D-1 values: InputLength",
    );
    let mut bad = *x;
    bad[3] = f32::NAN;
    c.refused(
        model.segment(&bad, &mut work),
        InferError::NonFiniteInput,
        "segment with a NaN: NonFiniteInput",
    );
    bad[3] = f32::INFINITY;
    c.refused(
        model.encode(&bad, &mut work),
        InferError::NonFiniteInput,
        "encode with an infinity: NonFiniteInput",
    );
    let mut short = [0.0f32; 8];
    c.refused(
        model.segment(x, &mut short),
        InferError::BufferLength,
        "a workspace too short: BufferLength",
    );
}

/// Byte `i` of the blob of `params` (header, values, CRC `crc`): the blob streamed
/// without holding it (it is larger than the micro:bit's RAM).
fn blob_byte(i: usize, params: &[f32], negate_from: usize, crc: u32) -> u8 {
    let h = HEADER.len();
    let values = h + 4 * params.len();
    if i < h {
        HEADER[i]
    } else if i < values {
        let k = (i - h) / 4;
        let v = if k >= negate_from {
            -params[k]
        } else {
            params[k]
        };
        v.to_le_bytes()[(i - h) % 4]
    } else {
        crc.to_le_bytes()[i - values]
    }
}

/// Streams a blob through the inference engine; returns the last answer.
fn load(svc: &mut InferEngine, negate_from: usize, crc: u32) -> Response {
    let params: &[f32] = &generated::PARAMS;
    let total = HEADER.len() + 4 * params.len() + 4;
    let mut out = Response::Ack;
    let mut offset = 0;
    while offset < total {
        let n = (total - offset).min(MAX_CHUNK);
        let mut bytes = heapless::Vec::new();
        for j in 0..n {
            let _ = bytes.push(blob_byte(offset + j, params, negate_from, crc));
        }
        let req = Request::LoadWeights {
            offset: offset as u32,
            bytes,
            last: offset + n == total,
        };
        svc.handle_each(&req, &mut |r| out = r.clone());
        if out != Response::Ack {
            break;
        }
        offset += n;
    }
    out
}

/// Where the weights `svc` runs come from.
fn source(svc: &InferEngine) -> Source {
    svc.model().storage().active().source
}

fn slots(c: &mut Checks) {
    let mut flash = Flash::new();
    c.check(weights::erase_slots(&mut flash).is_ok(), "erase both slots");
    let Ok(active) = weights::boot() else {
        c.check(false, "boot");
        return;
    };
    let mut slot = None;
    let Ok(svc) = inference::engine(&mut slot, active) else {
        c.check(false, "the inference engine");
        return;
    };
    let params: &[f32] = &generated::PARAMS;
    let never = usize::MAX;

    // The compiled-in weights, streamed as a blob: slot 0.
    let r = load(svc, never, BLOB_CRC);
    c.check(
        r == Response::Loaded {
            weights_crc: BLOB_CRC,
        } && source(svc) == (Source::Slot { index: 0, seq: 1 }),
        "load: the blob goes to slot 0 and is in use",
    );
    c.check(
        matches!(weights::boot(), Ok(a) if a.source == (Source::Slot { index: 0, seq: 1 }) && a.blob_crc == BLOB_CRC),
        "reboot: slot 0 is picked",
    );

    // Changed weights with a wrong CRC: refused, nothing changes.
    let from = SHAPE.segmenter_offset();
    let r = load(svc, from, BLOB_CRC);
    c.check(
        matches!(r, Response::Error(ErrorCode::BadCrc { .. }))
            && source(svc) == (Source::Slot { index: 0, seq: 1 }),
        "load with a bad CRC: BadCrc, slot 0 still in use",
    );
    c.check(
        matches!(weights::boot(), Ok(a) if a.source == (Source::Slot { index: 0, seq: 1 })),
        "reboot after the failed load: slot 0",
    );

    // The same changed weights with their CRC: slot 1, newer.
    let crc = weights::crc_of(
        params
            .iter()
            .enumerate()
            .map(|(k, &v)| if k >= from { -v } else { v }),
    );
    let r = load(svc, from, crc);
    c.check(
        r == Response::Loaded { weights_crc: crc }
            && source(svc) == (Source::Slot { index: 1, seq: 2 }),
        "load of new weights: slot 1, write 2",
    );
    let mut work = [0.0f32; SHAPE.work_len()];
    let seg = svc
        .model()
        .segmenter_params()
        .iter()
        .zip(&params[from..])
        .all(|(a, b)| *a == -*b);
    let runs = svc.model().segment(&golden::SAMPLES[0], &mut work).is_ok();
    c.check(seg && runs, "the new weights are in use");
    c.check(
        matches!(weights::boot(), Ok(a) if a.source == (Source::Slot { index: 1, seq: 2 }) && a.blob_crc == crc),
        "reboot: the newest slot (1) is picked",
    );

    // `svc` is not used past this point: its model points into slot 1, which changes.
    // Corrupt slot 1 (clear one bit, as flash can): boot falls back to slot 0.
    let addr = weights::slot_addr(1) + 16 + 4 * 100;
    // SAFETY: reading a word of slot 1 (flash, 4-aligned); nothing writes it meanwhile.
    let word = unsafe { core::ptr::read_volatile(addr as *const u32) };
    let bit = 1u32 << (word.trailing_zeros() % 32);
    use hvae_firmware::board::FlashWriter;
    let cleared = word & !bit;
    let wrote = word != 0 && flash.write_word(addr, cleared).is_ok();
    c.check(
        wrote
            && weights::slot::<weights::F32>(1).is_none()
            && matches!(weights::boot(), Ok(a) if a.source == (Source::Slot { index: 0, seq: 1 })),
        "a corrupted newest slot is skipped: slot 0",
    );
    c.check(
        weights::erase_slots(&mut flash).is_ok()
            && matches!(weights::boot(), Ok(a) if a.source == Source::Compiled),
        "slots erased: the compiled-in weights again",
    );
}

/// Word `k` of the int8 blob of `m` after its header (what `LoadWeights` hands the
/// slots): the weights four to a word (padded with zeros), the ints, the floats.
fn int8_word(m: &weights::int8::FlashModel, k: usize) -> u32 {
    let w = m.weights();
    let nw = w.len().div_ceil(4);
    if k < nw {
        let b = |i: usize| w.get(4 * k + i).map_or(0, |&v| v as u8);
        return u32::from_le_bytes([b(0), b(1), b(2), b(3)]);
    }
    match m.ints().get(k - nw) {
        Some(&v) => v as u32,
        None => m
            .floats()
            .get(k - nw - m.ints().len())
            .map_or(0, |v| v.to_bits()),
    }
}

/// The int8 slots (`cluster_int8`'s): a blob's words written, committed only when they
/// form a model, picked at boot; a refused one leaves the slot in use.
fn int8_slots(c: &mut Checks) {
    use hvae::device::{int8_words, Int8Weights, Slots};
    use weights::int8::{self, Int8};
    let mut flash = Flash::new();
    c.check(weights::erase_slots(&mut flash).is_ok(), "erase both slots");
    let Ok(compiled) = int8::compiled() else {
        c.check(false, "the compiled-in int8 model");
        return;
    };
    let model = compiled.params.clone();
    let mut w = weights::FlashWeights::<Flash, Int8>::new(compiled, Flash::new());
    let n = int8_words(&int8::SHAPE);
    let fill = |w: &mut weights::FlashWeights<Flash, Int8>, bad: bool| -> Result<(), ErrorCode> {
        w.begin()?;
        for k in 0..n {
            // A weight of -128 in the first word when `bad`.
            let v = int8_word(&model, k);
            w.put(k, if bad && k == 0 { (v & !0xFF) | 0x80 } else { v })?;
        }
        w.commit(int8::BLOB_CRC)
    };
    let ok = fill(&mut w, false);
    let in_slot0 = w.active().source == (Source::Slot { index: 0, seq: 1 });
    c.check(
        ok.is_ok() && in_slot0 && w.model().weights() == model.weights(),
        "int8 blob written: slot 0, the same model",
    );
    let boot = weights::boot_with::<Int8>(int8::compiled);
    c.check(
        matches!(&boot, Ok(a) if a.source == (Source::Slot { index: 0, seq: 1 }) && a.blob_crc == int8::BLOB_CRC && a.params.floats() == model.floats()),
        "reboot: int8 slot 0 is picked",
    );
    let bad = fill(&mut w, true);
    c.check(
        bad == Err(ErrorCode::OutOfRange)
            && w.active().source == (Source::Slot { index: 0, seq: 1 })
            && weights::slot::<Int8>(1).is_none(),
        "a weight of -128: OutOfRange, slot 1 not sealed, slot 0 in use",
    );
    c.check(
        weights::erase_slots(&mut flash).is_ok()
            && matches!(weights::boot_with::<Int8>(int8::compiled), Ok(a) if a.source == Source::Compiled),
        "int8 slots erased: the compiled-in int8 model again",
    );
}

/// The parser against the core's decoder (mps2-an386 only, see `main`).
#[cfg(board = "mps2_an386")]
mod frames {
    use super::{Checks, Rng};
    use hvae::device::INTERNAL_ERROR_FRAME;
    use hvae::protocol::{borrowed, FrameDecoder};
    use hvae::protocol::{
        decode, encode, ErrorCode, FrameError, Request, Response, TrainOptimiser, TrainScope,
        TrainSettings, MAX_CHUNK, MAX_REQUEST_FRAME, MAX_SAMPLE,
    };
    use hvae_firmware::weights::SHAPE;

    /// A random request of any variant (vectors of random length and bits, NaN included).
    fn random_request(rng: &mut Rng) -> Request {
        fn floats(rng: &mut Rng) -> heapless::Vec<f32, MAX_SAMPLE> {
            let n = match rng.below(4) {
                0 => 0,
                1 => SHAPE.input,
                2 => MAX_SAMPLE,
                _ => rng.below(MAX_SAMPLE as u32 + 1) as usize,
            };
            let mut v = heapless::Vec::new();
            for _ in 0..n {
                let _ = v.push(f32::from_bits(rng.next()));
            }
            v
        }
        match rng.below(7) {
            0 => Request::Info,
            1 => {
                let n = rng.below(MAX_CHUNK as u32 + 1) as usize;
                let mut bytes = heapless::Vec::new();
                for _ in 0..n {
                    let _ = bytes.push(rng.next() as u8);
                }
                Request::LoadWeights {
                    offset: rng.next() >> rng.below(32),
                    bytes,
                    last: rng.below(2) == 1,
                }
            }
            2 => Request::Segment {
                sample: floats(rng),
            },
            3 => Request::Encode {
                sample: floats(rng),
            },
            4 => Request::ReadWeights {
                offset: rng.next() >> rng.below(32),
                count: (rng.next() >> rng.below(32)) as u16,
            },
            5 => Request::Checkpoint,
            _ => Request::TrainBatch {
                samples: floats(rng),
                steps: (rng.next() >> rng.below(32)) as u16,
                settings: (rng.below(2) == 1).then(|| TrainSettings {
                    scope: match rng.below(4) {
                        0 => TrainScope::Full,
                        1 => TrainScope::EncoderAndSegmenter,
                        2 => TrainScope::SegmenterOnly,
                        _ => TrainScope::SegmenterAndNormalisation,
                    },
                    optimiser: match rng.below(3) {
                        0 => TrainOptimiser::Sgd {
                            momentum: f32::from_bits(rng.next()),
                        },
                        1 => TrainOptimiser::Adam,
                        _ => TrainOptimiser::OnlineKMeans {
                            memory: rng.next() as u16,
                            spawn_above: f32::from_bits(rng.next()),
                            spawn_window: rng.next() as u8,
                            spawn_count: rng.next() as u8,
                        },
                    },
                    lr: f32::from_bits(rng.next()),
                    batch: rng.next() as u8,
                }),
            },
        }
    }

    const BODY: usize = MAX_REQUEST_FRAME + 16;

    /// True if the firmware's receiver and parser and the core's decoder agree on the
    /// frame of message `body` (same request, or same error).
    fn agree(body: &[u8]) -> bool {
        let mut frame = [0u8; BODY + BODY / 254 + 2];
        let n = cobs::encode(body, &mut frame);
        // The firmware's path: the receiver (COBS) and `parse`, fed the same frame.
        let mut rx = FrameDecoder::<{ BODY + BODY / 254 + 2 }>::new();
        let mut mine = Err(FrameError::Truncated);
        let mut answers = 0;
        for &b in frame[..n].iter().chain(&[0u8]) {
            if let Some(r) = rx.push_frame(b) {
                answers += 1;
                mine = r.and_then(borrowed::parse).map(|q| q.to_request());
            }
        }
        if n == 0 {
            // COBS has no encoding for an empty message: an empty frame, which both
            // decoders ignore.
            return answers == 0;
        }
        if answers != 1 {
            defmt::println!(
                "       the receiver gave {=u32} answers to one frame of {=usize} bytes",
                answers,
                n
            );
            return false;
        }
        let core = decode::<Request>(&mut frame[..n]);
        match (&core, mine) {
            // Compare encodings: NaN values make `==` on requests useless.
            (Ok(a), Ok(b)) if same_encoding(a, &b) => true,
            (Err(a), Err(b)) if *a == b => true,
            (core, mine) => {
                // Say what differs (the first few times).
                static mut SHOWN: u32 = 0;
                // SAFETY: single-threaded test program, no interrupt touches it.
                let shown = unsafe {
                    SHOWN += 1;
                    SHOWN
                };
                if shown <= 3 {
                    let head = &body[..body.len().min(12)];
                    defmt::println!(
                        "       differ on {=[u8]} ({=usize} bytes): core {}, parse {}",
                        head,
                        body.len(),
                        core.as_ref().map(|_| ()),
                        mine.map(|_| ())
                    );
                }
                false
            }
        }
    }

    fn same_encoding(a: &Request, b: &Request) -> bool {
        let (mut ea, mut eb) = ([0u8; BODY + 8], [0u8; BODY + 8]);
        match (encode(a, &mut ea), encode(b, &mut eb)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }

    pub fn frames(c: &mut Checks) {
        let mut rng = Rng(0x9E37_79B9);
        let mut body = [0u8; BODY];
        let (mut ok_valid, mut ok_mutated, mut cases, mut errors) = (true, true, 0u32, 0u32);
        for _ in 0..400 {
            let req = random_request(&mut rng);
            let mut frame = [0u8; BODY + 8];
            let Ok(f) = encode(&req, &mut frame) else {
                ok_valid = false;
                continue;
            };
            let flen = f.len() - 1;
            let Ok(n) = cobs::decode_in_place(&mut frame[..flen]) else {
                ok_valid = false;
                continue;
            };
            body[..n].copy_from_slice(&frame[..n]);
            ok_valid &= matches!(borrowed::parse(&body[..n]), Ok(r) if r.to_request() == req || req_has_nan(&req))
                && agree(&body[..n]);
            // Mutations of this encoding.
            for _ in 0..8 {
                let mut m = [0u8; BODY];
                let mut len = n;
                m[..n].copy_from_slice(&body[..n]);
                match rng.below(5) {
                    0 => len = rng.below(n as u32 + 1) as usize,
                    1 if n > 0 => {
                        let i = rng.below(n as u32) as usize;
                        m[i] ^= 1 << rng.below(8);
                    }
                    2 if n > 0 => {
                        // A large varint byte (continuation or spare bits) in the header.
                        let i = rng.below((n as u32).min(8)) as usize;
                        m[i] = [0x80, 0xFF, 0x10, 0x04][rng.below(4) as usize];
                    }
                    3 if n < BODY => {
                        m[n] = rng.next() as u8;
                        len = n + 1;
                    }
                    _ if n > 0 => m[0] = rng.below(10) as u8,
                    _ => {}
                }
                cases += 1;
                errors += u32::from(borrowed::parse(&m[..len]).is_err());
                ok_mutated &= agree(&m[..len]);
            }
        }
        c.check(
            ok_valid,
            "parse reads 400 random requests of every variant as encoded",
        );
        c.check(
            ok_mutated,
            "parse and the core decoder agree on 3200 truncated/corrupted requests",
        );
        defmt::println!(
            "       {=u32} of {=u32} mutated requests were errors",
            errors,
            cases
        );
        // Hand-made edge cases: overlong varints, bad bool/option tags, over-capacity vectors.
        let edge: [&[u8]; 10] = [
            &[0x80, 0x80, 0x80, 0x80, 0x00],       // variant 0 in 5 bytes: fine
            &[0x80, 0x80, 0x80, 0x80, 0x10],       // spare bits set: Malformed
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], // 6 bytes: Malformed
            &[0x04, 0x00, 0xFF, 0xFF, 0x04],       // ReadWeights count u16 overflow
            &[0x04, 0x00, 0xFF, 0xFF, 0x03],       // ReadWeights count 65535
            &[0x01, 0x00, 0x00, 0x02],             // LoadWeights last = 2
            &[0x06, 0x00, 0x00, 0x02],             // TrainBatch settings tag 2
            &[0x02, 0x81, 0x02],                   // Segment of 257 values, no data
            &[0x01, 0x00, 0x81, 0x02],             // LoadWeights of 257 bytes, no data
            &[],                                   // empty message
        ];
        c.check(
            edge.iter().all(|b| agree(b)),
            "parse and the core decoder agree on edge cases",
        );
        let mut big = [0u8; 3 + 4 * 257];
        big[..3].copy_from_slice(&[0x02, 0x81, 0x02]);
        c.check(
            agree(&big) && borrowed::parse(&big) == Err(FrameError::Malformed),
            "a 257-value sample: Malformed, as the core",
        );

        let mut f = [0u8; 8];
        c.check(
        matches!(encode(&Response::Error(ErrorCode::Internal), &mut f), Ok(x) if *x == INTERNAL_ERROR_FRAME),
        "the hard-coded internal-error frame is the core's encoding",
    );

        // The receiver: oversized, bad COBS, empty frames, resynchronisation.
        let mut rx = FrameDecoder::<16>::new();
        let mut results = [None::<Result<usize, FrameError>>; 4];
        let mut k = 0;
        let stream: [&[u8]; 4] = [
            &[7u8; 40],
            &[0, 0, 0],
            &[0x05, 0x01, 0x00],
            &[0x02, 0x05, 0x00],
        ];
        for part in stream {
            for &b in part {
                if let Some(r) = rx.push_frame(b) {
                    if k < results.len() {
                        results[k] = Some(r.map(|m| m.len()));
                    }
                    k += 1;
                }
            }
        }
        c.check(
            k == 3
                && results[0] == Some(Err(FrameError::Oversized))
                && results[1] == Some(Err(FrameError::BadEncoding))
                && results[2] == Some(Ok(1)),
            "receiver: oversized once, empty frames ignored, bad COBS, then back in step",
        );
    }

    fn req_has_nan(r: &Request) -> bool {
        let nan = |v: &[f32]| v.iter().any(|x| x.is_nan());
        match r {
            Request::Segment { sample } | Request::Encode { sample } => nan(sample),
            Request::TrainBatch {
                samples, settings, ..
            } => nan(samples) || settings.is_some_and(|s| {
                s.lr.is_nan()
                    || matches!(s.optimiser, TrainOptimiser::Sgd { momentum } if momentum.is_nan())
                    || matches!(
                        s.optimiser,
                        TrainOptimiser::OnlineKMeans { spawn_above, .. } if spawn_above.is_nan()
                    )
            }),
            _ => false,
        }
    }
}

fn nor_flash(c: &mut Checks) {
    use embedded_storage::nor_flash::{NorFlash, NorFlashErrorKind, ReadNorFlash};
    use hvae_firmware::board::FlashRegion;
    let mut r = FlashRegion::checkpoints(Flash::new());
    let cap = r.capacity();
    if cap == 0 {
        c.check(
            r.write(0, &[0; 4]) == Err(NorFlashErrorKind::OutOfBounds),
            "empty region (micro:bit): a write is OutOfBounds",
        );
        return;
    }
    let page = FlashRegion::<Flash>::ERASE_SIZE as u32;
    let last = cap as u32 - page;
    let erased = r.erase(last, cap as u32).is_ok();
    let mut buf = [0u8; 8];
    let blank = r.read(last, &mut buf).is_ok() && buf == [0xFF; 8];
    c.check(erased && blank, "erase of the last page: reads 0xFF");
    let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
    let wrote = r.write(last + 8, &data).is_ok();
    let mut back = [0u8; 8];
    c.check(
        wrote && r.read(last + 8, &mut back).is_ok() && back == data,
        "write two words, read them back",
    );
    c.check(
        r.write(last + 2, &data[..4]) == Err(NorFlashErrorKind::NotAligned)
            && r.write(last, &data[..3]) == Err(NorFlashErrorKind::NotAligned)
            && r.erase(1, page) == Err(NorFlashErrorKind::NotAligned),
        "unaligned write or erase: NotAligned",
    );
    c.check(
        r.write(cap as u32 - 4, &data) == Err(NorFlashErrorKind::OutOfBounds)
            && r.read(cap as u32, &mut back[..1]) == Err(NorFlashErrorKind::OutOfBounds)
            && r.erase(0, cap as u32 + page) == Err(NorFlashErrorKind::OutOfBounds),
        "past the end: OutOfBounds",
    );
    c.check(r.erase(last, cap as u32).is_ok(), "erase again");
}

mod kernels {
    use super::{generated, Checks, Rng, SHAPE};
    use hvae::kernels::{dense_backward, dense_forward, dense_forward2, portable};
    use hvae::shape::TensorId;
    use hvae::Activation;

    /// The widest layer.
    const W: usize = SHAPE.max_width();
    /// The random layers: every size up to this many rows and inputs.
    const ROWS: usize = 17;
    const INPUTS: usize = 19;

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// The target kernel against the portable one on `W` (`rows x n`) and `b`, for the
    /// inputs `x0` and `x1` (`n` values), with each activation, one and two inputs.
    fn agree(w: &[f32], b: &[f32], x0: &[f32], x1: &[f32]) -> bool {
        let rows = b.len();
        let mut ok = true;
        for act in [None, Some(Activation::Relu), Some(Activation::Tanh)] {
            let (mut y, mut z) = ([f32::NAN; W], [f32::NAN; W]);
            let (mut y1, mut z1) = ([f32::NAN; W], [f32::NAN; W]);
            let (Some(y), Some(z), Some(y1), Some(z1)) = (
                y.get_mut(..rows),
                z.get_mut(..rows),
                y1.get_mut(..rows),
                z1.get_mut(..rows),
            ) else {
                return false;
            };
            let f = dense_forward(w, b, x0, y, act);
            let g = portable::dense_forward(w, b, x0, z, act);
            ok &= same_bits(y, z) && f.to_bits() == g.to_bits();
            let (f0, f1) = dense_forward2(w, b, (x0, x1), (&mut *y, &mut *y1), act);
            let (g0, g1) = portable::dense_forward2(w, b, (x0, x1), (&mut *z, &mut *z1), act);
            ok &= same_bits(y, z) && same_bits(y1, z1);
            ok &= f0.to_bits() == g0.to_bits() && f1.to_bits() == g1.to_bits();
        }
        ok
    }

    /// The target's backward pass against the portable one on `W` (`dy.len() x
    /// x.len()`): `dw`, `db` (`dw_len` values, starting from values of `rng`) and `dx`.
    fn agree_backward<const N: usize>(w: &[f32], x: &[f32], dy: &[f32], rng: &mut Rng) -> bool {
        let (n_out, n_in) = (dy.len(), x.len());
        let (mut dw, mut dw_p) = ([0.0f32; N], [0.0f32; N]);
        let (mut db, mut db_p) = ([0.0f32; W], [0.0f32; W]);
        let (mut dx, mut dx_p) = ([f32::NAN; W], [f32::NAN; W]);
        for (a, b) in dw
            .iter_mut()
            .zip(&mut dw_p)
            .chain(db.iter_mut().zip(&mut db_p))
        {
            *a = rng.f32();
            *b = *a;
        }
        let parts = (
            dw.get_mut(..n_out * n_in),
            dw_p.get_mut(..n_out * n_in),
            db.get_mut(..n_out),
            db_p.get_mut(..n_out),
            dx.get_mut(..n_in),
            dx_p.get_mut(..n_in),
        );
        let (Some(dw), Some(dw_p), Some(db), Some(db_p), Some(dx), Some(dx_p)) = parts else {
            return false;
        };
        dense_backward(w, x, dy, Some((&mut *dw, &mut *db)), Some(&mut *dx));
        portable::dense_backward(w, x, dy, Some((&mut *dw_p, &mut *db_p)), Some(&mut *dx_p));
        let mut ok = same_bits(dw, dw_p) && same_bits(db, db_p) && same_bits(dx, dx_p);
        // Without the parameters' gradients (a frozen layer), and without `dx`.
        dx.fill(f32::NAN);
        dx_p.fill(f32::NAN);
        dense_backward(w, x, dy, None, Some(&mut *dx));
        portable::dense_backward(w, x, dy, None, Some(&mut *dx_p));
        ok &= same_bits(dx, dx_p);
        dense_backward(w, x, dy, Some((&mut *dw, &mut *db)), None);
        portable::dense_backward(w, x, dy, Some((&mut *dw_p, &mut *db_p)), None);
        ok && same_bits(dw, dw_p) && same_bits(db, db_p)
    }

    pub fn kernels(c: &mut Checks) {
        let mut rng = Rng(0x2545_f491);
        let params = &generated::PARAMS[..];
        let (mut ok, mut layers) = (true, 0u32);
        for t in SHAPE.tensors() {
            let bias = match t.id {
                TensorId::EncoderWeight(l) => TensorId::EncoderBias(l),
                TensorId::MuWeight => TensorId::MuBias,
                TensorId::DecoderWeight(l) => TensorId::DecoderBias(l),
                _ => continue,
            };
            let w = params.get(t.range());
            let b = SHAPE.find(bias).and_then(|b| params.get(b.range()));
            let (Some(w), Some(b)) = (w, b) else {
                ok = false;
                continue;
            };
            layers += 1;
            let (mut x0, mut x1) = ([0.0f32; W], [0.0f32; W]);
            let (Some(x0), Some(x1)) = (x0.get_mut(..t.cols), x1.get_mut(..t.cols)) else {
                ok = false;
                continue;
            };
            for round in 0..4 {
                for (a, b) in x0.iter_mut().zip(x1.iter_mut()) {
                    (*a, *b) = (rng.f32(), rng.f32());
                }
                // A non-finite input in the later rounds (the encoder's input check).
                let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
                if let (Some(v), Some(&nf)) = (x0.get_mut(round * 3 % t.cols), bad.get(round)) {
                    *v = nf;
                }
                ok &= agree(w, b, x0, x1);
                // The backward pass, for a random upstream gradient.
                #[cfg(board = "mps2_an386")]
                {
                    let mut dy = [0.0f32; W];
                    dy.iter_mut().for_each(|v| *v = rng.f32());
                    if let Some(dy) = dy.get(..t.rows) {
                        ok &= agree_backward::<{ W * W }>(w, x0, dy, &mut rng);
                    }
                }
            }
        }
        c.check(
            ok && layers >= 2,
            "the model's dense layers: the same bits as the portable kernels",
        );
        defmt::println!("       {=u32} layers", layers);

        let mut ok = true;
        let mut w = [0.0f32; ROWS * INPUTS];
        let (mut b, mut x0, mut x1) = ([0.0f32; ROWS], [0.0f32; INPUTS], [0.0f32; INPUTS]);
        for v in w.iter_mut().chain(&mut b) {
            *v = rng.f32();
        }
        for rows in 1..=ROWS {
            for n in 0..=INPUTS {
                for (a, b) in x0.iter_mut().zip(x1.iter_mut()) {
                    (*a, *b) = (rng.f32(), rng.f32());
                }
                let parts = (w.get(..rows * n), b.get(..rows), x0.get(..n), x1.get(..n));
                let (Some(w), Some(b), Some(x0), Some(x1)) = parts else {
                    ok = false;
                    continue;
                };
                ok &= agree(w, b, x0, x1);
                if let Some(dy) = b.get(..rows) {
                    ok &= agree_backward::<{ ROWS * INPUTS }>(w, x0, dy, &mut rng);
                }
            }
        }
        c.check(
            ok,
            "random layers of 1..=17 rows and 0..=19 inputs: the same bits as the portable kernels",
        );
    }
}

mod kernels_i8 {
    use super::{int8, Checks, Rng};
    use hvae::kernels::{dense_i8, dense_i8_dequant, portable};

    /// Random layers: every size up to this many rows and inputs.
    const ROWS: usize = 9;
    const INPUTS: usize = 44;

    /// Weights 4-byte aligned (the assembly's case), one spare byte to misalign them.
    #[repr(C, align(4))]
    struct Aligned([i8; ROWS * INPUTS + 4]);

    /// Both kernels on one layer, each clamp and the dequantised head: the same values.
    fn agree(w: &[i8], x: &[i8], ch: &[portable::Channel], bias: &[i32], scale: &[f32]) -> bool {
        agree_in::<{ ROWS * 4 }>(&ALL_CLAMPS, w, x, ch, bias, scale)
    }

    /// [`agree`] with the clamps `mins`, for layers of up to `N` rows.
    fn agree_in<const N: usize>(
        mins: &[i8],
        w: &[i8],
        x: &[i8],
        ch: &[portable::Channel],
        bias: &[i32],
        scale: &[f32],
    ) -> bool {
        let rows = ch.len();
        let mut ok = true;
        for &min in mins {
            let (mut y, mut z) = ([0x55i8; N], [0x55i8; N]);
            let (Some(y), Some(z)) = (y.get_mut(..rows), z.get_mut(..rows)) else {
                return false;
            };
            dense_i8(w, x, ch, y, min);
            portable::dense_i8(w, x, ch, z, min);
            ok &= y == z;
        }
        let rows = bias.len();
        let (mut y, mut z) = ([f32::NAN; N], [f32::NAN; N]);
        let (Some(y), Some(z)) = (y.get_mut(..rows), z.get_mut(..rows)) else {
            return false;
        };
        dense_i8_dequant(w, x, bias, scale, y);
        portable::dense_i8_dequant(w, x, bias, scale, z);
        ok && y
            .iter()
            .zip(z.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits())
    }

    pub fn kernels_i8(c: &mut Checks) {
        let mut rng = Rng(0x9e37_79b9);
        // The digits model's layers: 64 -> 32 (channels), 32 -> 8 (the direction head).
        let s = int8::SHAPE;
        let (d, h, m) = (s.input, s.hidden(0), s.latent);
        let mut ok = true;
        let parts = (
            int8::WEIGHTS.split_at_checked(h * d),
            int8::INTS.split_at_checked(3 * h),
        );
        if let (Some((w1, w2)), Some((ch, mu_b))) = parts {
            let (ch, _) = ch.as_chunks::<3>();
            let scale = [0.001f32, -2.5, 1.0e-7, 3.0e5, 1.0, 0.5, 7.0, 1.0e-3];
            for round in 0..8 {
                let mut x = [0i8; 64];
                let mut hx = [0i8; 32];
                for v in x.iter_mut().chain(hx.iter_mut()) {
                    *v = match round {
                        0 => 127,
                        1 => -128,
                        _ => rng.i8(),
                    };
                }
                let (Some(x), Some(hx), Some(scale)) = (x.get(..d), hx.get(..h), scale.get(..m))
                else {
                    ok = false;
                    break;
                };
                ok &= agree(w1, x, ch, &[], &[]);
                ok &= agree(w2, hx, &[], mu_b, scale);
            }
        } else {
            ok = false;
        }
        c.check(
            ok,
            "the int8 model's layers: the same values as the portable kernels",
        );

        let mut ok = true;
        let mut buf = Aligned([0; ROWS * INPUTS + 4]);
        let mut layer = Channels::<ROWS>::new();
        let mut x = [0i8; INPUTS];
        for rows in 1..=ROWS {
            for n in 0..=INPUTS {
                for v in buf.0.iter_mut().chain(x.iter_mut()) {
                    *v = rng.i8();
                }
                // Any multiplier and offset, the shift sometimes any of 0..=63.
                layer.draw(&mut rng, 4, |rng, r| {
                    [rng.next() as i32 >> (r % 8), rng.next() as i32]
                });
                for skew in [0, 1] {
                    let w = buf.0.get(skew..skew + rows * n);
                    ok &= layer.agree::<{ ROWS * 4 }>(&ALL_CLAMPS, w, &x, rows, n);
                }
            }
        }
        c.check(
            ok,
            "random int8 layers of 1..=9 rows and 0..=44 inputs: the same values as the portable kernels",
        );

        // Wider layers over the model's weights (in flash): more rows than one call of
        // the M0 assembly takes (32), inputs a multiple of 8 and not.
        let mut ok = true;
        let mut layer = Channels::<BIG_ROWS>::new();
        let mut x = [0i8; 64];
        for (rows, n) in [
            (33, 64),
            (36, 56),
            (40, 57),
            (45, 48),
            (71, 32),
            (36, 8),
            (37, 9),
        ] {
            for v in x.iter_mut() {
                *v = rng.i8();
            }
            // Non-negative multipliers, the shift rarely off the fast path.
            layer.draw(&mut rng, 16, |rng, _| {
                [rng.next() as i32 >> 8, (rng.next() >> 1) as i32]
            });
            // At the two clamps of the model.
            let w = int8::WEIGHTS.get(..rows * n);
            ok &= layer.agree::<BIG_ROWS>(&[0, -127], w, &x, rows, n);
        }
        c.check(
            ok,
            "int8 layers of 33..=71 rows and 8..=64 inputs: the same values as the portable kernels",
        );
    }

    /// Every clamp [`agree`] tries: a ReLU's, the model's other and the extremes.
    const ALL_CLAMPS: [i8; 5] = [0, -127, -128, 5, 127];

    /// Random requantisation channels, biases and dequantisation scales of a layer of up
    /// to `N` rows.
    struct Channels<const N: usize> {
        ch: [portable::Channel; N],
        bias: [i32; N],
        scale: [f32; N],
    }

    impl<const N: usize> Channels<N> {
        fn new() -> Self {
            Channels {
                ch: [[0; 3]; N],
                bias: [0; N],
                scale: [0.0; N],
            }
        }

        /// Draws every row: the channel's first two values from `draw(rng, r)` (`r` the
        /// row's first draw), its shift on the fast path (33..=62) but one row in
        /// `any_shift_every` (by `r`), then any of 0..=63; the bias, the scale.
        fn draw(
            &mut self,
            rng: &mut Rng,
            any_shift_every: u32,
            draw: impl Fn(&mut Rng, u32) -> [i32; 2],
        ) {
            for ((c, b), sc) in self.ch.iter_mut().zip(&mut self.bias).zip(&mut self.scale) {
                let r = rng.next();
                let [c0, c1] = draw(rng, r);
                let shift = if r.is_multiple_of(any_shift_every) {
                    r >> 26
                } else {
                    33 + (r >> 8) % 30
                };
                *c = [c0, c1, shift as i32];
                *b = rng.next() as i32 >> 4;
                *sc = (rng.next() >> 8) as f32 * 1.0e-6;
            }
        }

        /// [`agree_in`] with the clamps `mins` on the weights `w` of the layer's first
        /// `rows` rows over the first `n` of `x`; false when `w` is `None` or a part is
        /// missing.
        fn agree<const M: usize>(
            &self,
            mins: &[i8],
            w: Option<&[i8]>,
            x: &[i8],
            rows: usize,
            n: usize,
        ) -> bool {
            let parts = (
                w,
                x.get(..n),
                self.ch.get(..rows),
                self.bias.get(..rows),
                self.scale.get(..rows),
            );
            let (Some(w), Some(x), Some(ch), Some(b), Some(sc)) = parts else {
                return false;
            };
            agree_in::<M>(mins, w, x, ch, b, sc)
        }
    }

    /// Rows of the wider layers.
    const BIG_ROWS: usize = 72;
}
