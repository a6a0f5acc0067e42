//! The inference service with int8 weights: the core's engine (`hvae::device`, the
//! dispatch of `cluster`) serving the int8 model ([`hvae::device::Int8`], answers
//! through [`hvae::QuantModel`]) with the [`INFER_INT8`] capabilities, on UART0,
//! forever: `Info`, `Segment`, `Encode`, and `LoadWeights` of an int8 blob
//! ([`hvae::store::blob::VERSION_INT8`]) written into the flash slot not in use as it
//! arrives and committed once its CRC and its values check out; every other request is
//! `Unsupported`.
//!
//! `Info` reports the int8 blob's format version and its CRC, and as `params_held` the
//! int8 model's values (weights, integers and reals).
//!
//! Boot: paint the stack, pick the weights (the newest valid int8 slot, else the
//! compiled-in int8 model, `model/digits_int8.hvae`: `hvae export --quantize int8
//! --format bin`), then serve. Logs (defmt) go to semihosting.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae::device::{Engine, Int8, CAP, INFER_INT8};
use hvae_firmware::board::{Flash, Uart};
use hvae_firmware::inference::{RX_FRAME, TX_FRAME};
use hvae_firmware::learning::NoBuffers;
use hvae_firmware::weights::int8::{self, SHAPE};
use hvae_firmware::weights::{self, FlashWeights, Source};
use hvae_firmware::{or_exit, rt};

/// The frames are `cluster`'s (`hvae_firmware::inference`), sized for the `f32` model:
/// the int8 model must have the same shape.
const _: () = assert!(SHAPE.input == weights::SHAPE.input);
const _: () = assert!(SHAPE.latent == weights::SHAPE.latent);
const _: () = assert!(SHAPE.clusters == weights::SHAPE.clusters);

/// One int8 model workspace.
const WORK_LEN: usize = hvae::infer::quant::work_len(&SHAPE);

/// The engine: the int8 model in flash, no buffers, no training state.
type Int8Engine = Engine<
    { SHAPE.input },
    WORK_LEN,
    Int8<FlashWeights<Flash, int8::Int8>>,
    NoBuffers,
    INFER_INT8,
    CAP,
    f32,
    (),
>;

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let active = or_exit!(
        weights::boot_with::<int8::Int8>(int8::compiled),
        "cluster_int8: {=str}"
    );
    match active.source {
        Source::Compiled => defmt::info!(
            "cluster_int8: compiled-in int8 weights, CRC {=u32:#010x}, kernel {=str}; serving on UART0",
            active.blob_crc,
            hvae::kernels::KERNEL_I8
        ),
        Source::Slot { index, seq } => defmt::info!(
            "cluster_int8: int8 weights from slot {=usize} (write {=u32}), CRC {=u32:#010x}, kernel {=str}; serving on UART0",
            index,
            seq,
            active.blob_crc,
            hvae::kernels::KERNEL_I8
        ),
    }
    let crc = active.blob_crc;
    let model = Int8(FlashWeights::new(active, Flash::new()));
    // Built where it stays (a local of `main`, which never returns).
    let mut slot = None;
    let server = match Int8Engine::new_in(&mut slot, model, crc, NoBuffers, RX_FRAME) {
        Ok(s) => s,
        Err(_) => {
            defmt::error!("cluster_int8: the engine refuses the model");
            rt::exit(false)
        }
    };
    let mut uart = Uart::new();
    // A UART does not fail: the server never returns.
    match server.serve::<_, RX_FRAME, TX_FRAME>(&mut uart) {}
}
