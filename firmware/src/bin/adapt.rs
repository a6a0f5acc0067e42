//! The adaptation service: everything `cluster` answers, plus `TrainBatch` with online
//! k-means of the centres (`SegmenterOnly`, and `SegmenterAndNormalisation`, whose input
//! normalisation follows a drifting sensor), on UART0. For a part without the RAM of a
//! trainer: it builds for the Cortex-M0 (micro:bit, 16 KiB of RAM) and the M4F alike.
//!
//! The engine and its server are the core's (`hvae::device`, the host tool runs the same
//! engine as its reference, `hvae device-train --scenario drift --device qemu:microbit`);
//! this program gives it the inference parameters in RAM (no decoder: online k-means needs
//! none), copied at boot from its compiled-in model (the digits with 16 hidden units:
//! the 32-unit model's weights and the engine do not fit 16 KiB), one model workspace, and no
//! training buffers: a `TrainBatch` with a gradient optimiser is refused (`Train`), as
//! is a weight load (`LoadWeights` is not among its capabilities: no room to stage the
//! incoming weights beside the ones in use).
//!
//! What it adapts is kept across resets: on `Checkpoint`, at every spawn or retirement of
//! a centre and every `CHECKPOINT_EVERY` centre updates, the engine saves the
//! normalisation, the segmenter and the state of online k-means (settings, counts,
//! spawner, tracker) to two A/B slots in memory.x's `CKPT` (`hvae::store::checkpoint`,
//! `Layout::adapted` named by the compiled-in blob's CRC); at boot the newest valid one
//! of this model is restored and its online k-means goes on.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;
use cortex_m_rt::entry;
use hvae::device::{adapt_slot_len, Engine, ADAPT, ADAPT_MEM};
use hvae::protocol::{max_request_frame, max_response_frame};
use hvae::Model;
use hvae_firmware::board::Uart;
use hvae_firmware::learning::{adapt_store, log_start, AdaptStore, CkptFlash, RamModel};
use hvae_firmware::{or_exit, rt};

// The compiled-in model: the digits with 16 hidden units (`weights::m0`).
use hvae_firmware::weights::m0::{BLOB_CRC, COMPILED, INFER_LEN, SHAPE};

/// One model workspace: the samples of a request are answered one at a time.
const WORK_LEN: usize = SHAPE.work_len();
/// Receive buffer: requests of one sample (a weight-load chunk is as long; more samples
/// per request would take RAM the micro:bit does not have).
const RX_FRAME: usize = max_request_frame(SHAPE.input);
/// Transmit buffer: the longest response of this model.
const TX_FRAME: usize = max_response_frame(SHAPE.clusters, SHAPE.latent);
/// Bytes of one checkpoint slot (1 KiB flash pages); memory.x's `CKPT` holds two.
const CKPT_SLOT: usize = adapt_slot_len::<CkptFlash, { SHAPE.input }>(&SHAPE);

static mut PARAMS: [f32; INFER_LEN] = [0.0; INFER_LEN];
/// The engine, built once at boot (in a static rather than on `main`'s stack: the
/// stack then holds only what a request needs).
static mut ENGINE: Option<Adapter> = None;

/// The engine of this program: no memory of past samples (online k-means keeps none).
type Adapter = Engine<{ SHAPE.input }, WORK_LEN, RamModel, AdaptStore, ADAPT, ADAPT_MEM, u8>;

/// Builds the engine in [`ENGINE`] (in place: `Engine::new_in`) over a RAM copy of the
/// compiled-in weights. Not inlined: what it uses on the stack is gone once serving
/// starts.
#[inline(never)]
fn build() -> Result<&'static mut Adapter, &'static str> {
    // SAFETY: taken once, here (`main` calls `build` once, before anything else can
    // reference PARAMS).
    let params: &'static mut [f32] = unsafe { &mut *addr_of_mut!(PARAMS) };
    for (p, &v) in params.iter_mut().zip(COMPILED.params()) {
        *p = v;
    }
    let model = Model::new(SHAPE, params).map_err(|_| "the compiled-in weights are not a model")?;
    // SAFETY: as PARAMS: taken once, here.
    let slot = unsafe { &mut *addr_of_mut!(ENGINE) };
    Adapter::new_in(slot, model, BLOB_CRC, adapt_store(CKPT_SLOT), RX_FRAME)
        .map_err(|_| "the engine refuses the model")
}

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let adapter = or_exit!(build(), "adapt: {=str}");
    let restored = adapter.restore();
    log_start("adapt", "compiled-in weights", BLOB_CRC, restored);
    let mut uart = Uart::new();
    // A UART does not fail: the server never returns.
    match adapter.serve::<_, RX_FRAME, TX_FRAME>(&mut uart) {}
}
