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
use hvae::device::{
    blob_crc, scratch_checkpoint_slot_len, scratch_len_with, scratch_optim_len, scratch_shape,
    Engine, LEARN, SCRATCH_MEM,
};
use hvae::protocol::{max_request_frame, max_response_frame, MAX_SAMPLE};
use hvae::shape::Shape;
use hvae::Model;
use hvae_firmware::board::Uart;
use hvae_firmware::learning::{CkptFlash, StaticStore};
use hvae_firmware::weights::SHAPE as DEPLOYED;
use hvae_firmware::{or_exit, rt};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The network learnt from scratch.
const SHAPE: Shape = scratch_shape(&DEPLOYED);
const PARAM_LEN: usize = SHAPE.param_len();
/// The trainer's storage (Full scope, a memory of `SCRATCH_MEM` samples); also the
/// staging area of a weight load.
const SCRATCH_LEN: usize = scratch_len_with(&SHAPE, SCRATCH_MEM);
/// The optimiser's state over the Full scope.
const OPTIM_LEN: usize = scratch_optim_len(&SHAPE);
/// Two workspaces (`Segment` and `Encode` answer two samples at a time).
const WORK_LEN: usize = 2 * SHAPE.work_len();
/// A training batch fills a request: the longest frame of `MAX_SAMPLE` values.
const RX_FRAME: usize = max_request_frame(MAX_SAMPLE);
/// The longest response frame of this network.
const TX_FRAME: usize = max_response_frame(SHAPE.clusters, SHAPE.latent);
/// Bytes of one checkpoint slot (1 KiB flash pages); memory.x's `CKPT` holds two.
const CKPT_SLOT: usize = scratch_checkpoint_slot_len::<CkptFlash>(&SHAPE);

static mut PARAMS: [f32; PARAM_LEN] = [0.0; PARAM_LEN];
static mut SCRATCH: [f32; SCRATCH_LEN] = [0.0; SCRATCH_LEN];
static mut OPTIM: [f32; OPTIM_LEN] = [0.0; OPTIM_LEN];
/// The engine of this program: the trainer remembers samples as bytes.
type Learner = Engine<
    { SHAPE.input },
    WORK_LEN,
    hvae::Model<f32, &'static mut [f32]>,
    StaticStore,
    LEARN,
    SCRATCH_MEM,
    u8,
>;

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
    let store = StaticStore::new(scratch, optim, CKPT_SLOT);
    if !store.has_checkpoints() {
        defmt::warn!("learn_scratch: no room for checkpoints in memory.x's CKPT");
    }
    // Used where it is built: moving the engine out of the `Result` would leave a
    // second copy of it on the stack for good.
    let mut built = Learner::new(model, crc, store, RX_FRAME);
    let learner = or_exit!(
        &mut built,
        "learn_scratch: the engine refuses the network: {}"
    );
    let restored = learner.restore();
    let crc = learner.crc();
    match restored {
        Ok(Some(seq)) => defmt::info!(
            "learn_scratch: checkpoint {=u32} restored, CRC {=u32:#010x}; serving on UART0",
            seq,
            crc
        ),
        Ok(None) => defmt::info!(
            "learn_scratch: fresh {=usize}-{=usize}-{=usize} network, CRC {=u32:#010x}, {=usize} bytes of training buffers; serving on UART0",
            SHAPE.input,
            hvae::device::SCRATCH_HIDDEN,
            SHAPE.latent,
            crc,
            4 * (SCRATCH_LEN + OPTIM_LEN + PARAM_LEN)
        ),
        Err(e) => defmt::warn!(
            "learn_scratch: checkpoint unreadable ({}), fresh network, CRC {=u32:#010x}; serving on UART0",
            e,
            crc
        ),
    }
    let mut uart = Uart::new();
    // A UART does not fail: the server never returns.
    match learner.serve::<_, RX_FRAME, TX_FRAME>(&mut uart) {}
}
