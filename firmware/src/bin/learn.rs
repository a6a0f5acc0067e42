//! The learning service: everything `cluster` answers, plus on-device training from
//! streamed samples (`TrainBatch`: scope and optimiser chosen by the host), `ReadWeights`
//! of the whole parameter vector (decoder included) and `Checkpoint`, on UART0.
//!
//! The engine is `src/learn.rs` (shared with the host tool, which runs the same file as
//! its reference); this program gives it static buffers and the board: the parameters
//! in RAM (copied from the compiled-in model at boot), the trainer's scratch and
//! optimiser state sized for Full scope with Adam, and a flash slot for checkpoints.
//!
//! Checkpoints persist the inference prefix (normalisation, encoder, segmenter) in the
//! flash slots `cluster` uses (`weights::SlotWriter`): after a reset both programs run
//! the checkpointed clusters; `learn` then takes the decoder from the compiled-in model
//! (it has no room in a slot) and reports the CRC of that combination.
#![no_std]
#![no_main]

// The host tool calls `Learner::model` for its reference run; this program does not.
#[allow(dead_code)]
#[path = "../learn.rs"]
mod learn;

use core::ptr::addr_of_mut;
use cortex_m_rt::entry;
use hvae::model::Model;
use hvae::protocol::{max_request_frame, ErrorCode, Response, MAX_SAMPLE};
use hvae_firmware::board::Serial;
use hvae_firmware::board::{Flash, Uart};
use hvae_firmware::rt::{self, Log};
use hvae_firmware::service::send;
use hvae_firmware::weights::{self, generated, Active, SlotWriter, SHAPE};
use hvae_firmware::wire::{self, Receiver};
use learn::{optim_len, scratch_len, Learner, Store};

const PARAM_LEN: usize = SHAPE.param_len();
const SCRATCH_LEN: usize = scratch_len(&SHAPE);
const OPTIM_LEN: usize = optim_len(&SHAPE);
const WORK_LEN: usize = SHAPE.work_len();
/// A training batch fills a request: the longest frame of `MAX_SAMPLE` values.
const RX_FRAME: usize = max_request_frame(MAX_SAMPLE);

static mut PARAMS: [f32; PARAM_LEN] = [0.0; PARAM_LEN];
static mut SCRATCH: [f32; SCRATCH_LEN] = [0.0; SCRATCH_LEN];
static mut OPTIM: [f32; OPTIM_LEN] = [0.0; OPTIM_LEN];

/// The static buffers and the checkpoint slots.
struct Board {
    flash: Flash,
    /// The weights in the slots (or compiled in): `SlotWriter` writes the other slot.
    persisted: Active,
}

impl Store for Board {
    type Buf = &'static mut [f32];

    fn take(&mut self, scratch: usize, optim: usize) -> Option<(Self::Buf, Self::Buf)> {
        if scratch > SCRATCH_LEN || optim > OPTIM_LEN {
            return None;
        }
        // SAFETY: the engine calls `take` only after dropping every buffer of the
        // previous call (the `Store` contract), so no other reference into SCRATCH or
        // OPTIM is live; nothing else touches them.
        let (s, o) = unsafe {
            (
                &mut (&mut *addr_of_mut!(SCRATCH))[..scratch],
                &mut (&mut *addr_of_mut!(OPTIM))[..optim],
            )
        };
        s.fill(0.0);
        o.fill(0.0);
        Some((s, o))
    }

    fn persist(&mut self, params: &[f32], crc: u32) -> Result<(), ErrorCode> {
        let w =
            SlotWriter::begin(&mut self.flash, &self.persisted).map_err(|_| ErrorCode::Storage)?;
        for (i, &v) in params.iter().take(weights::INFER_LEN).enumerate() {
            w.put(&mut self.flash, i, v)
                .map_err(|_| ErrorCode::Storage)?;
        }
        self.persisted = w
            .commit(&mut self.flash, crc, &self.persisted)
            .map_err(|_| ErrorCode::Storage)?;
        Ok(())
    }
}

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let persisted = match weights::boot() {
        Ok(a) => a,
        Err(why) => {
            Log::new().s("learn: ").s(why).emit();
            rt::exit(false)
        }
    };
    // SAFETY: taken once, here, before anything else can reference PARAMS.
    let params: &'static mut [f32] = unsafe { &mut *addr_of_mut!(PARAMS) };
    params.copy_from_slice(&generated::PARAMS);
    // The checkpointed inference prefix, if any, over the compiled-in decoder.
    params[..weights::INFER_LEN].copy_from_slice(persisted.model.params());
    let crc = learn::blob_crc(&SHAPE, params);
    let model = match Model::new(SHAPE, params) {
        Ok(m) => m,
        Err(_) => {
            Log::new().s("learn: the weights are not a model").emit();
            rt::exit(false)
        }
    };
    let board = Board {
        flash: Flash::new(),
        persisted,
    };
    let mut learner: Learner<{ SHAPE.input }, WORK_LEN, &'static mut [f32], Board> =
        match Learner::new(model, crc, board, RX_FRAME) {
            Ok(l) => l,
            Err(_) => {
                Log::new().s("learn: the engine refuses the model").emit();
                rt::exit(false)
            }
        };
    Log::new()
        .s("learn: weights CRC ")
        .x(crc)
        .s(", ")
        .u(SCRATCH_LEN as u32 * 4 + OPTIM_LEN as u32 * 4 + PARAM_LEN as u32 * 4)
        .s(" bytes of training buffers; serving on UART0")
        .emit();
    let mut uart = Uart::new();
    let mut rx = Receiver::<RX_FRAME>::new();
    loop {
        let byte = uart.read();
        let Some(frame) = rx.push(byte) else { continue };
        let resp = match frame.and_then(wire::parse) {
            Ok(req) => learner.handle(&req.to_request()),
            Err(e) => Response::Error(e.into()),
        };
        send(&mut uart, &resp);
    }
}
