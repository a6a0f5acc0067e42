//! What a learning program (`learn`, `learn_scratch`, `adapt`) gives the core's engine
//! ([`hvae::device`]): its big buffers as statics, its checkpoint slots in memory.x's
//! `CKPT` region, and the RAM figures it reports.

use crate::board::{Flash, FlashRegion};
use crate::rt;
use hvae::device::{Measures, Resources, SlotsOnly, Store};
use hvae::Checkpoints;

/// The checkpoint region (`CKPT` in memory.x) as NOR flash.
pub type CkptFlash = FlashRegion<Flash>;

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

    /// Whether the checkpoint slots fit memory.x's `CKPT` (without them the engine
    /// answers `Checkpoint` with `Unsupported`).
    pub fn has_checkpoints(&self) -> bool {
        self.checkpoints.is_some()
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
/// fit.
fn checkpoints(slot: usize) -> Option<Checkpoints<CkptFlash>> {
    u32::try_from(slot)
        .ok()
        .and_then(|s| Checkpoints::new(FlashRegion::checkpoints(Flash::new()), 0, s).ok())
}
