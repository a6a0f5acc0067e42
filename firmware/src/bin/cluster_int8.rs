//! The inference service with int8 weights: the core's engine (`hvae::device`, the
//! dispatch of `cluster`) serving the compiled-in int8 model (`model/digits_int8.rs`:
//! `hvae export --quantize int8 --format rust`) through [`hvae::device::Int8`] (answers
//! by [`hvae::QuantModel`]), on UART0, forever: `Info`, `Segment` and `Encode`; every
//! other request is `Unsupported` (the weights are compiled in: no slots, no
//! `ReadWeights` of `f32` values).
//!
//! `Info` reports the int8 blob's format version ([`hvae::store::blob::VERSION_INT8`])
//! and its CRC, and as `params_held` the int8 model's values (weights, integers and
//! reals). Logs (defmt) go to semihosting.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae::device::{Engine, Int8, CAP};
use hvae::protocol::{CAP_ENCODE, CAP_SEGMENT};
use hvae::QuantModel;
use hvae_firmware::inference::{RX_FRAME, TX_FRAME};
use hvae_firmware::learning::NoBuffers;
use hvae_firmware::rt;

/// The int8 form of the digits model.
#[allow(dead_code)]
mod int8 {
    include!("../../model/digits_int8.rs");
}

/// The frames are `cluster`'s (`hvae_firmware::inference`), sized for the `f32` model:
/// the int8 model must have the same shape.
const _: () = assert!(int8::SHAPE.input == hvae_firmware::weights::SHAPE.input);
const _: () = assert!(int8::SHAPE.latent == hvae_firmware::weights::SHAPE.latent);
const _: () = assert!(int8::SHAPE.clusters == hvae_firmware::weights::SHAPE.clusters);

/// One int8 model workspace.
const WORK_LEN: usize = hvae::infer::quant::work_len(&int8::SHAPE);

/// The compiled-in int8 model.
type Int8Model = QuantModel<&'static [i8], &'static [i32], &'static [f32]>;

/// The engine: the int8 model, no buffers, no training state; answers only.
type Int8Engine = Engine<
    { int8::SHAPE.input },
    WORK_LEN,
    Int8<Int8Model>,
    NoBuffers,
    { CAP_SEGMENT | CAP_ENCODE },
    CAP,
    f32,
    (),
>;

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
    // Built where it stays (a local of `main`, which never returns).
    let mut slot = None;
    let server =
        match Int8Engine::new_in(&mut slot, Int8(model), int8::BLOB_CRC, NoBuffers, RX_FRAME) {
            Ok(s) => s,
            Err(_) => {
                defmt::error!("cluster_int8: the engine refuses the model");
                rt::exit(false)
            }
        };
    let mut uart = hvae_firmware::board::Uart::new();
    // A UART does not fail: the server never returns.
    match server.serve::<_, RX_FRAME, TX_FRAME>(&mut uart) {}
}
