//! The inference service with int8 weights: answers `Info`, `Segment` and `Encode` with
//! the compiled-in int8 model (`model/digits_int8.rs`: `hvae export --quantize int8
//! --format rust`) through [`hvae::QuantModel`], on UART0, forever; every other request
//! is `Unsupported` (weights are compiled in: no slots, no `ReadWeights` of `f32`
//! values).
//!
//! `Info` reports the int8 blob's format version ([`hvae::store::blob::VERSION_INT8`])
//! and its CRC, and as `params_held` the int8 model's values (weights, integers and
//! reals). Frames, parsing and responses are the core's (its framing,
//! [`hvae::protocol::borrowed::parse`], [`hvae::device::send`]); the answers are
//! [`hvae::protocol::answer::answer_segment_int8`]'s. Logs (defmt) go to semihosting.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae::device::send;
use hvae::infer::quant::{float_len, int_len, weight_len};
use hvae::protocol::answer::{answer_encode_int8, answer_segment_int8};
use hvae::protocol::borrowed::F32s;
use hvae::protocol::borrowed::{self, RequestRef};
use hvae::protocol::{DeviceInfo, ErrorCode, FrameDecoder, Response, CAP_ENCODE, CAP_SEGMENT};
use hvae::QuantModel;
use hvae_firmware::board::{Serial, Uart};
use hvae_firmware::inference::{BATCH, RX_FRAME, TX_FRAME};
use hvae_firmware::rt;

/// The int8 form of the digits model.
#[allow(dead_code)]
mod int8 {
    include!("../../model/digits_int8.rs");
}

/// The frames and batches are `cluster`'s (`hvae_firmware::inference`), sized for the
/// `f32` model: the int8 model must have the same shape.
const _: () = assert!(int8::SHAPE.input == hvae_firmware::weights::SHAPE.input);
const _: () = assert!(int8::SHAPE.latent == hvae_firmware::weights::SHAPE.latent);
const _: () = assert!(int8::SHAPE.clusters == hvae_firmware::weights::SHAPE.clusters);

const D: usize = int8::SHAPE.input;
const WORK_LEN: usize = hvae::infer::quant::work_len(&int8::SHAPE);
/// The int8 model's values: weights, integers and reals.
const HELD: usize = weight_len(&int8::SHAPE) + int_len(&int8::SHAPE) + float_len(&int8::SHAPE);

type Int8Model = QuantModel<&'static [i8], &'static [i32], &'static [f32]>;

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let model = QuantModel::new(
        int8::SHAPE,
        &int8::WEIGHTS[..],
        &int8::INTS[..],
        &int8::FLOATS[..],
    );
    let model = match model {
        Ok(m) => m,
        Err(e) => {
            defmt::error!("cluster_int8: the compiled-in int8 model: {}", e);
            rt::exit(false)
        }
    };
    defmt::info!(
        "cluster_int8: compiled-in int8 weights, CRC {=u32:#010x}, kernel {=str}; serving on UART0",
        int8::BLOB_CRC,
        hvae::kernels::KERNEL_I8
    );
    serve(&model, &mut Uart::new())
}

/// Answers every frame from `serial`: the request's responses, or one error response
/// for a frame that is not a request.
fn serve(model: &Int8Model, serial: &mut Uart) -> ! {
    let mut rx = FrameDecoder::<RX_FRAME>::new();
    let mut work = [0.0f32; WORK_LEN];
    let mut samples = [0.0f32; BATCH * D];
    // The one response value, overwritten by every frame (about 1.3 KiB).
    let mut out = Response::Ack;
    loop {
        let byte = serial.read();
        let Some(frame) = rx.push_frame(byte) else {
            continue;
        };
        // A UART does not fail.
        let mut emit = |r: &Response| {
            let _ = send(serial, r, &mut [0u8; TX_FRAME]);
        };
        let req = match frame.and_then(borrowed::parse) {
            Ok(req) => req,
            Err(e) => {
                out = Response::Error(e.into());
                emit(&out);
                continue;
            }
        };
        match req {
            RequestRef::Info => {
                out = Response::Info(info());
                emit(&out);
            }
            RequestRef::Segment(x) => {
                if let Some(xs) = take_samples(&mut samples, x, &mut out, &mut emit) {
                    answer_segment_int8(model, xs, &mut work, &mut out, &mut emit);
                }
            }
            RequestRef::Encode(x) => {
                if let Some(xs) = take_samples(&mut samples, x, &mut out, &mut emit) {
                    answer_encode_int8(model, xs, &mut work, &mut out, &mut emit);
                }
            }
            _ => {
                out = Response::Error(ErrorCode::Unsupported);
                emit(&out);
            }
        }
    }
}

/// What `Info` reports: the int8 blob's version and CRC, the memory figures.
#[inline(never)]
fn info() -> DeviceInfo {
    let mut info = DeviceInfo::new(
        &int8::SHAPE,
        HELD,
        int8::BLOB_CRC,
        RX_FRAME,
        CAP_SEGMENT | CAP_ENCODE,
    );
    info.blob = hvae::store::blob::VERSION_INT8;
    let res = rt::resources();
    info.flash_used = res.flash;
    info.ram_static = res.ram;
    info.stack_peak = res.stack;
    info
}

/// Copies a request's samples into `buf` and returns them: a whole number of samples,
/// at most [`BATCH`]; else one `InputLength` error response (the core checks the rest).
fn take_samples<'b>(
    buf: &'b mut [f32; BATCH * D],
    x: F32s<'_>,
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) -> Option<&'b [f32]> {
    if let Some(xs) = buf.get_mut(..x.len()) {
        if x.copy_to(xs) {
            return Some(xs);
        }
    }
    *out = Response::Error(ErrorCode::InputLength);
    emit(out);
    None
}
