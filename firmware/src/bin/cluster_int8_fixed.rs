//! The smallest int8 inference service: `cluster_int8` without weight slots. The core's
//! engine (`hvae::device`, the dispatch of `cluster`) serves the compiled-in int8 model
//! (`model/digits_int8.hvae`: `hvae export --quantize int8 --format bin`) through
//! [`hvae::device::Int8`] (answers by [`hvae::QuantModel`]), on UART0, forever: `Info`,
//! `Segment` and `Encode`; every other request is `Unsupported` (the weights are
//! compiled in: no slots, no `LoadWeights`, no `ReadWeights` of `f32` values). For a part
//! whose flash cannot spare the slots and the load path (`cluster_int8` has them).
//!
//! `Info` reports the int8 blob's format version ([`hvae::store::blob::VERSION_INT8`])
//! and its CRC, and as `params_held` the int8 model's values (weights, integers and
//! reals). Logs (defmt) go to semihosting.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae::device::{Engine, Int8, CAP};
use hvae::protocol::{CAP_ENCODE, CAP_SEGMENT};
use hvae_firmware::inference::{RX_FRAME, TX_FRAME};
use hvae_firmware::learning::NoBuffers;
use hvae_firmware::weights::int8::{self, FlashModel, SHAPE};
use hvae_firmware::{or_exit, rt};

/// The frames are `cluster`'s (`hvae_firmware::inference`), sized for the `f32` model:
/// the int8 model must have the same shape.
const _: () = assert!(SHAPE.input == hvae_firmware::weights::SHAPE.input);
const _: () = assert!(SHAPE.latent == hvae_firmware::weights::SHAPE.latent);
const _: () = assert!(SHAPE.clusters == hvae_firmware::weights::SHAPE.clusters);

/// One int8 model workspace.
const WORK_LEN: usize = hvae::infer::quant::work_len(&SHAPE);

/// The engine: the compiled-in int8 model, no buffers, no training state; answers only.
type Int8Engine = Engine<
    { SHAPE.input },
    WORK_LEN,
    Int8<FlashModel>,
    NoBuffers,
    { CAP_SEGMENT | CAP_ENCODE },
    CAP,
    f32,
    (),
>;

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let active = or_exit!(int8::compiled(), "cluster_int8_fixed: {=str}");
    defmt::info!(
        "cluster_int8_fixed: compiled-in int8 weights, CRC {=u32:#010x}, kernel {=str}; serving on UART0",
        active.blob_crc,
        hvae::kernels::KERNEL_I8
    );
    let crc = active.blob_crc;
    // Built where it stays (a local of `main`, which never returns).
    let mut slot = None;
    let server = match Int8Engine::new_in(&mut slot, Int8(active.params), crc, NoBuffers, RX_FRAME)
    {
        Ok(s) => s,
        Err(_) => {
            defmt::error!("cluster_int8_fixed: the engine refuses the model");
            rt::exit(false)
        }
    };
    let mut uart = hvae_firmware::board::Uart::new();
    // A UART does not fail: the server never returns.
    match server.serve::<_, RX_FRAME, TX_FRAME>(&mut uart) {}
}
