//! Learning from scratch: the `learn` service for a network small enough to train from a
//! fresh initialisation within 48 KiB of training state (the `scratch` scenario of
//! `hvae device-train`).
//!
//! The network is the compiled-in model's with one hidden layer of
//! [`hvae::device::SCRATCH_HIDDEN`] units ([`hvae::device::scratch_shape`]), freshly
//! initialised at boot ([`hvae::Model::init`], generator seeded with 0: the host's
//! `scratch_model`); the host loads the weights it wants to start from (`LoadWeights`),
//! then streams `TrainBatch` requests. The core's engine remembers a sliding sample
//! of [`SCRATCH_MEM`] samples as bytes and trains layer by layer (no gradient of the whole
//! parameter vector); the optimiser's buffer is sized for the Full scope with
//! [`hvae::device::SCRATCH_OPTIM`] (an optimiser whose state is larger is refused).
//!
//! `Info` reports the program's static RAM and peak stack: with the engine (and its
//! memory of samples) on the stack, their sum is all the RAM the program uses.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;
use cortex_m_rt::entry;
use hvae::device::{blob_crc, scratch_shape, Engine, LEARN, SCRATCH_MEM};
use hvae::shape::Shape;
use hvae::Model;
use hvae_firmware::board::Uart;
use hvae_firmware::learning::{log_start, RamModel, StaticStore, TrainerSizes};
use hvae_firmware::weights::SHAPE as DEPLOYED;
use hvae_firmware::{or_exit, rt};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The network learnt from scratch.
const SHAPE: Shape = scratch_shape(&DEPLOYED);
/// The buffers' and frames' sizes for it.
const SIZES: TrainerSizes = TrainerSizes::scratch(&SHAPE);

static mut PARAMS: [f32; SIZES.params] = [0.0; SIZES.params];
static mut SCRATCH: [f32; SIZES.scratch] = [0.0; SIZES.scratch];
static mut OPTIM: [f32; SIZES.optim] = [0.0; SIZES.optim];
/// The engine of this program: the trainer remembers samples as bytes.
type Learner =
    Engine<{ SHAPE.input }, { SIZES.work }, RamModel, StaticStore, LEARN, SCRATCH_MEM, u8>;

#[entry]
fn main() -> ! {
    rt::paint_stack();
    // SAFETY: taken once, here, before anything else can reference PARAMS.
    let params: &'static mut [f32] = unsafe { &mut *addr_of_mut!(PARAMS) };
    let mut model = or_exit!(
        Model::new(SHAPE, params),
        "learn_scratch: the network's shape is refused: {}"
    );
    model.init(&mut Xoshiro256PlusPlus::seed_from_u64(0));
    let crc = blob_crc(&SHAPE, model.params());
    // SAFETY: taken once, here; from now on only the store touches them.
    let (scratch, optim) = unsafe { (&mut *addr_of_mut!(SCRATCH), &mut *addr_of_mut!(OPTIM)) };
    let store = StaticStore::new(scratch, optim, SIZES.ckpt_slot);
    // Used where it is built: moving the engine out of the `Result` would leave a
    // second copy of it on the stack for good.
    let mut built = Learner::new(model, crc, store, SIZES.rx_frame);
    let learner = or_exit!(
        &mut built,
        "learn_scratch: the engine refuses the network: {}"
    );
    defmt::info!(
        "learn_scratch: a {=usize}-{=usize}-{=usize} network, {=usize} bytes of training buffers",
        SHAPE.input,
        hvae::device::SCRATCH_HIDDEN,
        SHAPE.latent,
        SIZES.buffer_bytes()
    );
    let restored = learner.restore();
    log_start("learn_scratch", "fresh network", learner.crc(), restored);
    let mut uart = Uart::new();
    // A UART does not fail: the server never returns.
    match learner.serve::<_, { SIZES.rx_frame }, { SIZES.tx_frame }>(&mut uart) {}
}
