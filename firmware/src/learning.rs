//! What a learning program (`learn`, `learn_scratch`, `adapt`) gives the core's engine
//! ([`hvae::device`]): its big buffers as statics, its checkpoint slots in memory.x's
//! `CKPT` region, and the RAM figures it reports.

use crate::board::{Flash, FlashRegion};
use crate::rt;
use hvae::device::{
    checkpoint_slot_len, optim_len, scratch_checkpoint_slot_len, scratch_len, scratch_len_with,
    scratch_optim_len, Measures, Resources, SlotsOnly, Store, SCRATCH_MEM,
};
use hvae::protocol::ErrorCode;
use hvae::protocol::{max_request_frame, max_response_frame, MAX_SAMPLE};
use hvae::shape::Shape;
use hvae::Checkpoints;

/// The checkpoint region (`CKPT` in memory.x) as NOR flash.
pub type CkptFlash = FlashRegion<Flash>;

/// A model whose parameters are a program's static buffer in RAM (copied from the
/// compiled-in weights, or initialised, at boot).
pub type RamModel = hvae::Model<f32, &'static mut [f32]>;

/// The sizes of a training program's static buffers and frames for a network, each a
/// `const` (`const SIZES: TrainerSizes = TrainerSizes::learn(&SHAPE);`), so that the
/// statics, the engine's workspace and the server's buffers are sized at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainerSizes {
    /// The parameter vector, in `f32`.
    pub params: usize,
    /// The trainer's storage (gradient, workspace, memory of samples), in `f32`; also
    /// the staging area of a weight load.
    pub scratch: usize,
    /// The optimiser's state, in `f32`.
    pub optim: usize,
    /// Two model workspaces: `Segment` and `Encode` answer two samples at a time
    /// (`Model::segment_batch`).
    pub work: usize,
    /// The receive buffer: a training batch fills a request, the longest frame of
    /// `MAX_SAMPLE` values.
    pub rx_frame: usize,
    /// The transmit buffer: the longest response frame of this network.
    pub tx_frame: usize,
    /// Bytes of one checkpoint slot (1 KiB flash pages); memory.x's `CKPT` holds two.
    pub ckpt_slot: usize,
}

impl TrainerSizes {
    /// `learn`'s: the deployed network, every scope with Adam, a memory of `f32`
    /// samples ([`hvae::device::scratch_len`], [`hvae::device::optim_len`]).
    pub const fn learn(shape: &Shape) -> Self {
        Self::with(
            shape,
            scratch_len(shape),
            optim_len(shape),
            checkpoint_slot_len::<CkptFlash>(shape),
        )
    }

    /// `learn_scratch`'s: the Full scope with [`hvae::device::SCRATCH_OPTIM`], a memory
    /// of [`SCRATCH_MEM`] byte samples, trained layer by layer.
    pub const fn scratch(shape: &Shape) -> Self {
        Self::with(
            shape,
            scratch_len_with(shape, SCRATCH_MEM),
            scratch_optim_len(shape),
            scratch_checkpoint_slot_len::<CkptFlash>(shape),
        )
    }

    const fn with(shape: &Shape, scratch: usize, optim: usize, ckpt_slot: usize) -> Self {
        TrainerSizes {
            params: shape.param_len(),
            scratch,
            optim,
            work: 2 * shape.work_len(),
            rx_frame: max_request_frame(MAX_SAMPLE),
            tx_frame: max_response_frame(shape.clusters, shape.latent),
            ckpt_slot,
        }
    }

    /// Bytes of the three training buffers (parameters, scratch, optimiser state).
    pub const fn buffer_bytes(&self) -> usize {
        core::mem::size_of::<f32>() * (self.params + self.scratch + self.optim)
    }
}

/// The engine's store on a board: a scratch and an optimiser buffer (a program's
/// statics, handed over once), checkpoint slots of `slot` bytes in `CKPT` (`None` when
/// memory.x gives no room for two), and the program's measured resources.
pub struct StaticStore {
    /// The buffers as pointer and length: the store hands out `&'static mut` views of
    /// them again and again, so it keeps no reference of its own that they would alias.
    scratch: (*mut f32, usize),
    optim: (*mut f32, usize),
    checkpoints: Option<Checkpoints<CkptFlash>>,
}

impl StaticStore {
    /// The store over `scratch` and `optim`, with two checkpoint slots of `slot` bytes.
    pub fn new(scratch: &'static mut [f32], optim: &'static mut [f32], slot: usize) -> Self {
        let checkpoints = checkpoints(slot);
        StaticStore {
            scratch: (scratch.as_mut_ptr(), scratch.len()),
            optim: (optim.as_mut_ptr(), optim.len()),
            checkpoints,
        }
    }
}

impl Store for StaticStore {
    type Buf = &'static mut [f32];
    type Flash = CkptFlash;

    fn take(&mut self, scratch: usize, optim: usize) -> Option<(Self::Buf, Self::Buf)> {
        if scratch > self.scratch.1 || optim > self.optim.1 {
            return None;
        }
        let (s, o) = (self.scratch.0, self.optim.0);
        // SAFETY: both point to `'static` buffers given to this store alone (`new` took
        // them by unique reference), and the lengths are within them (checked above). The engine calls `take` only
        // after dropping every buffer of the previous call (the `Store` contract), so
        // no other reference into them is live while the new ones are.
        let (s, o) = unsafe {
            (
                core::slice::from_raw_parts_mut(s, scratch),
                core::slice::from_raw_parts_mut(o, optim),
            )
        };
        s.fill(0.0);
        o.fill(0.0);
        Some((s, o))
    }

    fn checkpoints(&mut self) -> Option<&mut Checkpoints<CkptFlash>> {
        self.checkpoints.as_mut()
    }

    fn resources(&mut self) -> Resources {
        rt::resources()
    }
}

/// The store of a program without training buffers or checkpoint slots (`cluster`,
/// whose loads go into its weight slots): anything that needs either is refused.
pub struct NoBuffers;

impl Store for NoBuffers {
    type Buf = &'static mut [f32];
    type Flash = CkptFlash;

    fn take(&mut self, _scratch: usize, _optim: usize) -> Option<(Self::Buf, Self::Buf)> {
        None
    }

    fn checkpoints(&mut self) -> Option<&mut Checkpoints<CkptFlash>> {
        None
    }

    fn resources(&mut self) -> Resources {
        rt::resources()
    }
}

/// The board's memory figures ([`rt::resources`]).
pub struct Board;

impl Measures for Board {
    fn resources() -> Resources {
        rt::resources()
    }
}

/// The store of `adapt`: no training buffers (the engine's online k-means needs none,
/// and anything that does is refused), and checkpoint slots in `CKPT` for what it
/// adapts ([`adapt_store`]).
pub type AdaptStore = SlotsOnly<CkptFlash, Board>;

/// The store of `adapt`, with two checkpoint slots of `slot` bytes (`None` when
/// memory.x gives no room for two).
pub fn adapt_store(slot: usize) -> AdaptStore {
    SlotsOnly::new(checkpoints(slot))
}

/// Two checkpoint slots of `slot` bytes at the start of `CKPT`; `None` when they do not
/// fit (a misconfigured build: the engine then answers `Checkpoint` with `Unsupported`,
/// and the log says so at boot).
fn checkpoints(slot: usize) -> Option<Checkpoints<CkptFlash>> {
    let slots = u32::try_from(slot)
        .ok()
        .and_then(|s| Checkpoints::new(FlashRegion::checkpoints(Flash::new()), 0, s).ok());
    if slots.is_none() {
        defmt::warn!(
            "no room for two checkpoint slots of {=usize} bytes in memory.x's CKPT",
            slot
        );
    }
    slots
}

/// Logs how a learning program `program` starts serving: from checkpoint `seq` (its
/// weights' CRC `crc`), or from `start` when there is none or it is unreadable.
pub fn log_start(program: &str, start: &str, crc: u32, restored: Result<Option<u32>, ErrorCode>) {
    match restored {
        Ok(Some(seq)) => defmt::info!(
            "{=str}: checkpoint {=u32} restored, CRC {=u32:#010x}; serving on UART0",
            program,
            seq,
            crc
        ),
        Ok(None) => defmt::info!(
            "{=str}: {=str}, CRC {=u32:#010x}; serving on UART0",
            program,
            start,
            crc
        ),
        Err(e) => defmt::warn!(
            "{=str}: checkpoint unreadable ({}), {=str}, CRC {=u32:#010x}; serving on UART0",
            program,
            e,
            start,
            crc
        ),
    }
}
