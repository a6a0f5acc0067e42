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
use hvae::device::{blob_crc, Engine};
use hvae::Model;
use hvae_firmware::board::Uart;
use hvae_firmware::learning::{log_start, RamModel, StaticStore, TrainerSizes};
use hvae_firmware::weights::{generated, SHAPE};
use hvae_firmware::{or_exit, rt};

/// The buffers' and frames' sizes for the compiled-in model.
const SIZES: TrainerSizes = TrainerSizes::learn(&SHAPE);

static mut PARAMS: [f32; SIZES.params] = [0.0; SIZES.params];
static mut SCRATCH: [f32; SIZES.scratch] = [0.0; SIZES.scratch];
static mut OPTIM: [f32; SIZES.optim] = [0.0; SIZES.optim];

/// The engine of this program.
type Learner = Engine<{ SHAPE.input }, { SIZES.work }, RamModel, StaticStore>;

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
    // SAFETY: taken once, here; from now on only the store touches them.
    let (scratch, optim) = unsafe { (&mut *addr_of_mut!(SCRATCH), &mut *addr_of_mut!(OPTIM)) };
    let store = StaticStore::new(scratch, optim, SIZES.ckpt_slot);
    // Used where it is built: moving the engine out of the `Result` would leave a
    // second copy of it on the stack for good.
    let mut built = Learner::new(model, crc, store, SIZES.rx_frame);
    let learner = or_exit!(&mut built, "learn: the engine refuses the model: {}");
    defmt::info!(
        "learn: {=usize} bytes of training buffers",
        SIZES.buffer_bytes()
    );
    let restored = learner.restore();
    log_start("learn", "compiled-in weights", learner.crc(), restored);
    let mut uart = Uart::new();
    // A UART does not fail: the server never returns.
    match learner.serve::<_, { SIZES.rx_frame }, { SIZES.tx_frame }>(&mut uart) {}
}
