//! The learning service: everything `cluster` answers, plus on-device training from
//! streamed samples (`TrainBatch`: scope and optimiser chosen by the host), `ReadWeights`
//! of the whole parameter vector (decoder included) and `Checkpoint`, on UART0.
//!
//! The engine and its server are the core's (`hvae::device`, with the `LEARN`
//! capabilities; the host tool runs the same engine as its reference); this program
//! gives it static buffers and the board: the parameters in RAM (copied from the
//! compiled-in model at boot), the trainer's scratch and optimiser state sized for Full
//! scope with Adam, a flash slot for checkpoints, and UART0 as its transport.
//!
//! Checkpoints (`hvae::store::checkpoint`: weights, optimiser state, step counts and the
//! trainer's memory, two slots, power-cut safe) go to memory.x's `CKPT` region (two slots
//! of the Full + Adam size, through `board::FlashRegion`). At boot the newest valid
//! checkpoint's training resumes (or its weights replace the compiled-in ones).
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;
use cortex_m_rt::entry;
use hvae::device::{blob_crc, checkpoint_slot_len, optim_len, scratch_len, Engine};
use hvae::protocol::{max_request_frame, max_response_frame, MAX_SAMPLE};
use hvae::Model;
use hvae_firmware::board::Uart;
use hvae_firmware::learning::{CkptFlash, StaticStore};
use hvae_firmware::weights::{generated, SHAPE};
use hvae_firmware::{or_exit, rt};

const PARAM_LEN: usize = SHAPE.param_len();
const SCRATCH_LEN: usize = scratch_len(&SHAPE);
const OPTIM_LEN: usize = optim_len(&SHAPE);
/// Two workspaces: `Segment` and `Encode` requests go through the encoder two samples
/// at a time (`Model::segment_batch`).
const WORK_LEN: usize = 2 * SHAPE.work_len();
/// A training batch fills a request: the longest frame of `MAX_SAMPLE` values.
const RX_FRAME: usize = max_request_frame(MAX_SAMPLE);
/// Transmit buffer: the longest response frame of this model.
const TX_FRAME: usize = max_response_frame(SHAPE.clusters, SHAPE.latent);

/// Bytes of one checkpoint slot (1 KiB flash pages); memory.x's `CKPT` holds two.
const CKPT_SLOT: usize = checkpoint_slot_len::<CkptFlash>(&SHAPE);

static mut PARAMS: [f32; PARAM_LEN] = [0.0; PARAM_LEN];
static mut SCRATCH: [f32; SCRATCH_LEN] = [0.0; SCRATCH_LEN];
static mut OPTIM: [f32; OPTIM_LEN] = [0.0; OPTIM_LEN];

/// The engine of this program.
type Learner = Engine<{ SHAPE.input }, WORK_LEN, hvae::Model<f32, &'static mut [f32]>, StaticStore>;

#[entry]
fn main() -> ! {
    rt::paint_stack();
    // SAFETY: taken once, here, before anything else can reference PARAMS.
    let params: &'static mut [f32] = unsafe { &mut *addr_of_mut!(PARAMS) };
    params.copy_from_slice(&generated::PARAMS);
    let crc = blob_crc(&SHAPE, params);
    let model = or_exit!(
        Model::new(SHAPE, params),
        "learn: the compiled-in weights are not a model: {}"
    );
    // `None` when memory.x gives no room for two slots (a misconfigured build): the
    // engine then answers `Checkpoint` with `Unsupported`, and says so here.
    // SAFETY: taken once, here; from now on only the store touches them.
    let (scratch, optim) = unsafe { (&mut *addr_of_mut!(SCRATCH), &mut *addr_of_mut!(OPTIM)) };
    let store = StaticStore::new(scratch, optim, CKPT_SLOT);
    if !store.has_checkpoints() {
        defmt::warn!("learn: no room for checkpoints in memory.x's CKPT");
    }
    // Used where it is built: moving the engine out of the `Result` would leave a
    // second copy of it on the stack for good.
    let mut built = Learner::new(model, crc, store, RX_FRAME);
    let learner = or_exit!(&mut built, "learn: the engine refuses the model: {}");
    let buffers = 4 * (SCRATCH_LEN + OPTIM_LEN + PARAM_LEN);
    let restored = learner.restore();
    let crc = learner.crc();
    match restored {
        Ok(Some(seq)) => defmt::info!(
            "learn: checkpoint {=u32} restored, CRC {=u32:#010x}, {=usize} bytes of training buffers; serving on UART0",
            seq,
            crc,
            buffers
        ),
        Ok(None) => defmt::info!(
            "learn: compiled-in weights, CRC {=u32:#010x}, {=usize} bytes of training buffers; serving on UART0",
            crc,
            buffers
        ),
        Err(e) => defmt::warn!(
            "learn: checkpoint unreadable ({}), compiled-in weights, CRC {=u32:#010x}, {=usize} bytes of training buffers; serving on UART0",
            e,
            crc,
            buffers
        ),
    }
    let mut uart = Uart::new();
    // A UART does not fail: the server never returns.
    match learner.serve::<_, RX_FRAME, TX_FRAME>(&mut uart) {}
}
