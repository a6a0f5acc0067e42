//! Checkpoints of a model that learns on the device: the weights, the optimiser state and
//! the trainer's step count, in two slots of NOR flash, so that a power cut at any moment
//! leaves a loadable model.
//!
//! Works on any flash driver that implements the `embedded-storage` 0.3
//! [`NorFlash`] traits (on-chip flash HALs, SPI NOR drivers, `&mut` of either), and
//! allocates nothing.
//!
//! # Usage
//!
//! A region of `2 * slot_len` bytes starting at `base` (both multiples of the flash's
//! `ERASE_SIZE`) is given to [`Checkpoints::new`]; [`slot_len`] computes the smallest
//! slot for a model at compile time. At boot, [`Checkpoints::load`] (or
//! [`Checkpoints::restore_trainer`]) returns the newest valid checkpoint, or `None`, and
//! the firmware then keeps its compiled-in weights. While learning,
//! [`Checkpoints::save`] (or [`Checkpoints::save_trainer`]) every N steps. When the
//! divergence guard has rejected too many steps in a row,
//! [`Checkpoints::restore_if_needed`] puts the last checkpoint back in one call.
//!
//! ```
//! use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
//! use hvae::store::checkpoint::{self, Checkpoints, Layout};
//! use hvae::train::optim::OptimKind;
//! use hvae::{Scope, Shape};
//!
//! // A RAM "flash" for the example; a firmware passes its HAL's flash driver instead.
//! struct Ram([u8; 8192]);
//! impl ErrorType for Ram { type Error = NorFlashErrorKind; }
//! impl ReadNorFlash for Ram {
//!     const READ_SIZE: usize = 1;
//!     fn read(&mut self, at: u32, out: &mut [u8]) -> Result<(), NorFlashErrorKind> {
//!         let at = at as usize;
//!         out.copy_from_slice(self.0.get(at..at + out.len()).ok_or(NorFlashErrorKind::OutOfBounds)?);
//!         Ok(())
//!     }
//!     fn capacity(&self) -> usize { self.0.len() }
//! }
//! impl NorFlash for Ram {
//!     const WRITE_SIZE: usize = 4;
//!     const ERASE_SIZE: usize = 1024;
//!     fn erase(&mut self, from: u32, to: u32) -> Result<(), NorFlashErrorKind> {
//!         self.0[from as usize..to as usize].fill(0xFF);
//!         Ok(())
//!     }
//!     fn write(&mut self, at: u32, data: &[u8]) -> Result<(), NorFlashErrorKind> {
//!         for (m, d) in self.0[at as usize..].iter_mut().zip(data) { *m &= *d; }
//!         Ok(())
//!     }
//! }
//!
//! const SHAPE: Shape = Shape::new(4, &[6], 3, 2).checked();
//! const LAYOUT: Layout = Layout::new::<f32>(SHAPE, Scope::Full, OptimKind::Adam);
//! const SLOT: usize = checkpoint::slot_len::<f32, Ram>(&SHAPE, Scope::Full, OptimKind::Adam);
//! assert_eq!(SLOT, 2048); // the record, rounded up to whole 1 KiB sectors
//!
//! let mut ckpt = Checkpoints::new(Ram([0xFF; 8192]), 2048, SLOT as u32)?;
//! let mut params = [0.0f32; LAYOUT.params()];
//! let mut moments = [0.0f32; LAYOUT.state()];
//! assert!(ckpt.load(&LAYOUT, &mut params, &mut moments)?.is_none()); // blank flash
//!
//! params[3] = 1.5;
//! moments[0] = 0.25;
//! let saved = ckpt.save(&LAYOUT, &params, &moments, 7, 7)?;
//! let (mut p, mut m) = ([0.0f32; LAYOUT.params()], [0.0f32; LAYOUT.state()]);
//! let loaded = ckpt.load(&LAYOUT, &mut p, &mut m)?.unwrap();
//! assert_eq!((loaded.seq, loaded.slot, loaded.optim_steps), (saved.seq, saved.slot, 7));
//! assert_eq!((p, m), (params, moments));
//! # Ok::<(), checkpoint::CheckpointError>(())
//! ```
//!
//! # Slot format (version 2)
//!
//! Little-endian; offsets from the start of the slot.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"HVCK"` ([`MAGIC`]) |
//! | 4 | 2 | format version `u16` ([`VERSION`]) |
//! | 6 | 2 | header length `u16` ([`HEADER_LEN`] = 40) |
//! | 8 | 4 | sequence number `u32` (1 for the first save, +1 for every save) |
//! | 12 | 4 | model fingerprint `u32` (CRC-32 of the shape, scope, optimiser and scalar width) |
//! | 16 | 4 | parameter count `P` |
//! | 20 | 4 | optimiser state count `S` |
//! | 24 | 4 | optimiser step counter |
//! | 28 | 4 | trainer step counter |
//! | 32 | 1 | scalar width `w` in bytes (4: `f32`, 8: `f64`) |
//! | 33 | 1 | scope code (0 full, 1 encoder and segmenter, 2 segmenter only, 3 normalisation and segmenter of [`Layout::adapted`]) |
//! | 34 | 1 | optimiser code (0 SGD, 1 Adam) |
//! | 35 | 4 | extra bytes `X` `u32` (version 2; zero in version 1) |
//! | 39 | 1 | reserved, zero |
//! | 40 | `w P` | parameters, in [`Shape`] layout order ([`Layout::adapted`]: normalisation offset, scale, segmenter) |
//! | `40 + w P` | `w S` | optimiser state ([`crate::train::optim::OptimState`] storage layout) |
//! | `40 + w (P + S)` | `X` | extra bytes: the trainer's resume record ([`OnlineTrainer::write_resume`]: memory of past samples, marginal, guard), after the caller's own (e.g. the device engine's settings and generator) |
//! | `B = 40 + w (P + S) + X` | 4 | CRC-32/ISO-HDLC of bytes `0..B` (zlib's `crc32`) |
//! | `C = round_up(B + 4, WRITE_SIZE)` | 4 | commit word [`COMMIT`], in its own write unit(s) |
//!
//! Bytes between the CRC and the commit word, after the commit word and up to the end of
//! the slot are left erased. [`Layout::record_len`] is `C + round_up(4, WRITE_SIZE)`.
//!
//! # Why a power cut cannot lose the model
//!
//! A save goes to the slot that does *not* hold the newest valid checkpoint: it erases
//! that slot sector by sector, writes header, values and CRC, and only then writes the
//! commit word. A slot counts as valid only with the magic, a consistent header, the
//! commit word and a matching CRC (and every value finite), so until the very last write
//! completes, the slot is invalid and [`Checkpoints::load`] returns the previous
//! checkpoint from the other slot (or `None` if there was none); from then on it returns
//! the new one. The newer of two valid slots is the one with the larger sequence number
//! (serial-number comparison, so the counter may wrap). Bits damaged later in a stored
//! slot (retention, disturb) fail its CRC, and the other slot is used.
//! `tests/checkpoint.rs` cuts the power after every single word write and sector erase
//! of a save, with and without torn (half-programmed) words, and flips bits in stored
//! slots.
//!
//! Nothing here writes a flash word twice between erases, so flash with ECC words (which
//! forbids that) is fine.
//!
//! The model of a power cut: the word write or sector erase under way may be left
//! half done (any mix of old and new bits in that word or sector), every other word is
//! as it was. A half-done state is caught by the commit word (it must read exactly
//! [`COMMIT`]) and by the CRC-32 (which misses a random corruption with probability
//! 2^-32). Flash whose half-programmed bits read back differently from one read to the
//! next is outside this model; the read-back after each save catches it at save time.
//!
//! # Cost (bounded, independent of the values)
//!
//! With `R` = [`Layout::record_len`] and `CHUNK` = 256 bytes of stack buffer:
//! - [`Checkpoints::load`]: validates both slots (reads at most `2 R` bytes, computes
//!   their CRC), then reads the chosen record once more to copy the values out:
//!   at most `3 R` bytes read and `2 R` bytes of CRC.
//! - [`Checkpoints::save`]: validates both slots (`2 R` bytes read), erases
//!   `slot_len / ERASE_SIZE` sectors, writes `R` bytes in at most `ceil(R / 256) + 1`
//!   write calls, then reads the slot back once (`R`) to verify it.
//!
//! Stack: one 256-byte buffer plus scalars. The flash's `READ_SIZE` and `WRITE_SIZE`
//! must divide 256 (true of every common part: 1 to 32 bytes) and `ERASE_SIZE` must be
//! a multiple of both.

use crate::infer::model::Model;
use crate::shape::{Activation, Likelihood, Posterior, Scope, Shape, MAX_HIDDEN};
use crate::train::optim::{state_len_in, OptimKind};
use crate::train::trainer::OnlineTrainer;
use crate::Real;
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

/// First four bytes of a checkpoint slot.
pub const MAGIC: [u8; 4] = *b"HVCK";
/// Slot format version this module writes. It reads version 1 too (written before
/// extra bytes existed: the same layout with none).
pub const VERSION: u16 = 2;
/// Bytes of the slot header; the first value starts here.
pub const HEADER_LEN: usize = 40;
/// The commit word, written last: a slot without it is an unfinished save.
pub const COMMIT: u32 = 0x5A3C_C3A5;
/// Bytes of the stack buffer that reads and writes go through.
pub const CHUNK: usize = 256;
const CRC_LEN: usize = 4;

static CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

const fn round_up(n: usize, to: usize) -> usize {
    if to == 0 {
        return n;
    }
    n.div_ceil(to).saturating_mul(to)
}

/// What a checkpoint of one model holds: the whole parameter vector of `shape`, the
/// optimiser state of `kind` over the parameters of `scope`, with scalars of the width of
/// `T` (`f32` or `f64`; values are stored exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Layout {
    shape: Shape,
    scope: Scope,
    kind: OptimKind,
    width: usize,
    /// `Some(identity)` for [`Layout::adapted`].
    adapted: Option<u32>,
    extra: usize,
}

impl Layout {
    /// The layout for scalars `T`.
    pub const fn new<T>(shape: Shape, scope: Scope, kind: OptimKind) -> Layout {
        Layout {
            shape,
            scope,
            kind,
            width: core::mem::size_of::<T>(),
            adapted: None,
            extra: 0,
        }
    }

    /// What a deployed model adapts without an optimiser (online k-means of the centres,
    /// a tracked input normalisation): its input normalisation (offset, then scale: `2 D`
    /// values) and its segmenter ([`Shape::segmenter_len`] values), in that order, and no
    /// optimiser state. `identity` names the weights they were adapted on (e.g. the
    /// weight blob's CRC): it enters the fingerprint, so a checkpoint adapted on other
    /// weights of the same shape is [`SlotState::Incompatible`], never loaded. Stored
    /// with scope code 3. [`Checkpoints::save_adapted`] and [`Checkpoints::load_adapted`]
    /// take the values straight from and into a model's parameter vector.
    pub const fn adapted<T>(shape: Shape, identity: u32) -> Layout {
        Layout {
            shape,
            scope: Scope::SegmenterOnly,
            kind: OptimKind::Sgd,
            width: core::mem::size_of::<T>(),
            adapted: Some(identity),
            extra: 0,
        }
    }

    /// The layout with `bytes` extra bytes after the values (none by default): a
    /// checkpoint of it holds them, one of another count is incompatible.
    pub const fn with_extra(self, bytes: usize) -> Layout {
        Layout {
            extra: bytes,
            ..self
        }
    }

    /// Extra bytes stored after the values.
    pub const fn extra(&self) -> usize {
        self.extra
    }

    /// Bytes of the values (parameters and optimiser state): where the extra bytes start,
    /// counted from the end of the header.
    const fn values_len(&self) -> usize {
        self.width * (self.params() + self.state())
    }

    /// The model's shape.
    pub const fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Parameters stored ([`Shape::param_len`]; `2 D` plus [`Shape::segmenter_len`] for
    /// [`Layout::adapted`]).
    pub const fn params(&self) -> usize {
        if self.adapted.is_some() {
            return 2 * self.shape.input + self.shape.segmenter_len();
        }
        self.shape.param_len()
    }

    /// Optimiser state scalars stored ([`state_len_in`] of the scope's parameters; none
    /// for [`Layout::adapted`]).
    pub const fn state(&self) -> usize {
        if self.adapted.is_some() {
            return 0;
        }
        state_len_in(self.kind, &self.shape, self.shape.scope_range(self.scope))
    }

    /// Bytes covered by the CRC: header and values.
    pub const fn body_len(&self) -> usize {
        HEADER_LEN + self.values_len() + self.extra
    }

    /// Offset of the commit word for a flash with `write_size`-byte words.
    pub const fn commit_offset(&self, write_size: usize) -> usize {
        round_up(self.body_len() + CRC_LEN, write_size)
    }

    /// Bytes of flash one checkpoint occupies, commit word included.
    pub const fn record_len(&self, write_size: usize) -> usize {
        self.commit_offset(write_size) + round_up(4, write_size)
    }

    /// The smallest slot: [`Layout::record_len`] rounded up to whole erase sectors.
    pub const fn slot_len(&self, write_size: usize, erase_size: usize) -> usize {
        round_up(self.record_len(write_size), erase_size)
    }

    /// CRC-32 of what must match between a checkpoint and the model it is loaded into.
    fn fingerprint(&self) -> u32 {
        let s = &self.shape;
        let mut d = CRC.digest();
        d.update(&(s.input as u32).to_le_bytes());
        d.update(&(s.depth() as u32).to_le_bytes());
        for l in 0..MAX_HIDDEN {
            d.update(&(s.hidden(l) as u32).to_le_bytes());
        }
        d.update(&(s.latent as u32).to_le_bytes());
        d.update(&(s.clusters as u32).to_le_bytes());
        d.update(&[
            match s.posterior {
                Posterior::VonMisesFisher => 0,
                Posterior::PowerSpherical => 1,
            },
            match s.likelihood {
                Likelihood::Gaussian => 0,
                Likelihood::Bernoulli => 1,
            },
            match s.activation {
                Activation::Relu => 0,
                Activation::Tanh => 1,
            },
            self.scope_code(),
            kind_code(self.kind),
            self.width as u8,
        ]);
        if let Some(identity) = self.adapted {
            d.update(&identity.to_le_bytes());
        }
        d.finalize()
    }

    /// The scope code stored in the header: [`Layout::adapted`]'s is 3.
    const fn scope_code(&self) -> u8 {
        if self.adapted.is_some() {
            return 3;
        }
        scope_code(self.scope)
    }
}

const fn scope_code(s: Scope) -> u8 {
    match s {
        Scope::Full => 0,
        Scope::EncoderAndSegmenter => 1,
        Scope::SegmenterOnly => 2,
    }
}

const fn kind_code(k: OptimKind) -> u8 {
    match k {
        OptimKind::Sgd => 0,
        OptimKind::Adam => 1,
        OptimKind::Factored => 2,
        OptimKind::FactoredRms => 3,
    }
}

/// Bytes of one slot for a model of `shape` training `scope` with optimiser `kind`, with
/// scalars `T`, on flash `F`: give it (or more, in whole sectors) to
/// [`Checkpoints::new`]. Usable in constants.
pub const fn slot_len<T, F: NorFlash>(shape: &Shape, scope: Scope, kind: OptimKind) -> usize {
    Layout::new::<T>(*shape, scope, kind).slot_len(F::WRITE_SIZE, F::ERASE_SIZE)
}

/// Writes a checkpoint's extra bytes, in pieces, to the function it is given
/// ([`Checkpoints::save_with_extra`]).
pub type ExtraWriter<'a> = &'a mut dyn FnMut(&mut dyn FnMut(&[u8]));

/// What went wrong with the flash driver ([`NorFlashErrorKind`], which is not `Copy`-stable
/// across versions, folded to three cases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlashFault {
    /// The driver reported an alignment error.
    NotAligned,
    /// The driver reported an out-of-bounds access.
    OutOfBounds,
    /// Any other driver error (including a power failure in the simulator).
    Other,
}

/// Why a checkpoint operation failed. Corrupt or missing checkpoints are *not* errors:
/// [`Checkpoints::load`] skips them (see [`SlotState`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CheckpointError {
    /// The flash driver failed.
    #[error("flash driver error: {0:?}")]
    Flash(FlashFault),
    /// The region is not usable: `base` or `slot_len` not a multiple of `ERASE_SIZE`
    /// (or zero), the two slots beyond the flash's capacity, or a `READ_SIZE` /
    /// `WRITE_SIZE` that does not divide [`CHUNK`].
    #[error("checkpoint region not aligned to the flash geometry or too large")]
    Geometry,
    /// The checkpoint does not fit in a slot (see [`slot_len`]).
    #[error("checkpoint does not fit in a slot")]
    SlotTooSmall,
    /// A parameter or state buffer does not have the layout's length.
    #[error("buffer length does not match the checkpoint layout")]
    BufferLength,
    /// The value at this index (parameters first, then optimiser state) is not finite:
    /// nothing was written.
    #[error("value {index} is not finite; nothing was written")]
    NonFinite {
        /// Index of the first bad value.
        index: u32,
    },
    /// The slot just written did not read back as a valid checkpoint.
    #[error("written checkpoint did not read back valid")]
    Verify,
    /// A slot index other than 0 or 1.
    #[error("no such checkpoint slot (0 or 1)")]
    NoSuchSlot,
}

fn flash_err<E: NorFlashError>(e: E) -> CheckpointError {
    CheckpointError::Flash(match e.kind() {
        NorFlashErrorKind::NotAligned => FlashFault::NotAligned,
        NorFlashErrorKind::OutOfBounds => FlashFault::OutOfBounds,
        _ => FlashFault::Other,
    })
}

/// Why a slot does not hold a valid checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Damage {
    /// Wrong magic, version or header length, or sizes that cannot fit in the slot.
    Header,
    /// No commit word: a save was interrupted (or the word is damaged).
    Uncommitted,
    /// The CRC does not match the contents.
    Crc,
    /// A stored value is not finite.
    NonFinite,
}

/// What one slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SlotState {
    /// Erased (the header reads as all `0xFF`).
    Empty,
    /// Not a valid checkpoint.
    Corrupt(Damage),
    /// An intact checkpoint of another model (shape, scope, optimiser or scalar width
    /// differ from the layout asked for): never loaded, overwritten like an old slot.
    Incompatible {
        /// Its sequence number.
        seq: u32,
    },
    /// An intact checkpoint of this model.
    Valid(Loaded),
}

impl SlotState {
    /// The sequence number of an intact slot (valid or incompatible).
    pub fn seq(&self) -> Option<u32> {
        match self {
            SlotState::Incompatible { seq } => Some(*seq),
            SlotState::Valid(l) => Some(l.seq),
            _ => None,
        }
    }
}

/// Which checkpoint was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Loaded {
    /// Slot index, 0 or 1.
    pub slot: u8,
    /// Its sequence number.
    pub seq: u32,
    /// The optimiser's step counter when saved.
    pub optim_steps: u32,
    /// The trainer's step counter when saved.
    pub train_steps: u32,
}

/// Where a save went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Saved {
    /// Slot index, 0 or 1.
    pub slot: u8,
    /// The new checkpoint's sequence number.
    pub seq: u32,
}

/// What [`Checkpoints::restore_if_needed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Restore {
    /// The trainer did not ask for a restore; nothing changed.
    NotNeeded,
    /// Model, optimiser and step count were restored from this checkpoint.
    Restored(Loaded),
    /// A restore was needed but there is no valid checkpoint: reload the compiled-in
    /// weights (and call [`OnlineTrainer::restored`]).
    NoCheckpoint,
}

/// `a` is newer than `b` in serial-number arithmetic (RFC 1982 style).
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Two checkpoint slots at `base` and `base + slot_len` of a NOR flash.
#[derive(Debug)]
pub struct Checkpoints<F> {
    flash: F,
    base: u32,
    slot_len: u32,
}

impl<F: NorFlash> Checkpoints<F> {
    /// Two slots of `slot_len` bytes at `base` of `flash` (the region
    /// `base..base + 2 slot_len` belongs to the checkpoints). `base` and `slot_len` must
    /// be multiples of `F::ERASE_SIZE`; use [`slot_len`] for the size. Checks the
    /// geometry only; reads nothing.
    pub fn new(flash: F, base: u32, slot_len: u32) -> Result<Self, CheckpointError> {
        let (r, w, e) = (F::READ_SIZE, F::WRITE_SIZE, F::ERASE_SIZE);
        let (b, s) = (base as usize, slot_len as usize);
        let ok = r >= 1
            && w >= 1
            && e >= 1
            && CHUNK.is_multiple_of(r)
            && CHUNK.is_multiple_of(w)
            && e.is_multiple_of(r)
            && e.is_multiple_of(w)
            && s > 0
            && b.is_multiple_of(e)
            && s.is_multiple_of(e)
            && s.checked_mul(2)
                .and_then(|t| t.checked_add(b))
                .is_some_and(|end| end <= flash.capacity() && u32::try_from(end).is_ok());
        if !ok {
            return Err(CheckpointError::Geometry);
        }
        Ok(Checkpoints {
            flash,
            base,
            slot_len,
        })
    }

    /// The flash driver back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// Bytes of each slot.
    pub fn slot_len(&self) -> u32 {
        self.slot_len
    }

    fn slot_base(&self, slot: usize) -> u32 {
        // Fits: checked against u32 in `new`.
        self.base + if slot == 0 { 0 } else { self.slot_len }
    }

    /// Reads `len` bytes at `offset` of `slot` through the chunk buffer, handing them to
    /// `f` in pieces (`f(position, bytes)`), with reads aligned to `READ_SIZE`.
    fn read_with<G>(
        &mut self,
        slot: usize,
        offset: usize,
        len: usize,
        mut f: G,
    ) -> Result<(), CheckpointError>
    where
        G: FnMut(usize, &[u8]),
    {
        let r = F::READ_SIZE;
        let end = offset
            .checked_add(len)
            .ok_or(CheckpointError::SlotTooSmall)?;
        if end > self.slot_len as usize {
            return Err(CheckpointError::SlotTooSmall);
        }
        let base = self.slot_base(slot) as usize;
        let mut buf = [0u8; CHUNK];
        let mut at = offset - offset % r;
        while at < end {
            let n = (round_up(end, r) - at).min(CHUNK);
            let chunk = buf.get_mut(..n).ok_or(CheckpointError::Geometry)?;
            self.flash
                .read((base + at) as u32, chunk)
                .map_err(flash_err)?;
            let lo = offset.max(at);
            let hi = end.min(at + n);
            if let Some(piece) = chunk.get(lo - at..hi - at) {
                f(lo, piece);
            }
            at += n;
        }
        Ok(())
    }

    /// Validates slot `slot` (0 or 1) against `layout` (reads at most
    /// [`Layout::record_len`] bytes).
    pub fn slot_state(
        &mut self,
        layout: &Layout,
        slot: usize,
    ) -> Result<SlotState, CheckpointError> {
        if slot > 1 {
            return Err(CheckpointError::NoSuchSlot);
        }
        let mut h = [0u8; HEADER_LEN];
        self.read_with(slot, 0, HEADER_LEN, |at, b| {
            h[at..at + b.len()].copy_from_slice(b)
        })?;
        if h.iter().all(|&b| b == 0xFF) {
            return Ok(SlotState::Empty);
        }
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let version = u16_at(4);
        if h[..4] != MAGIC || !(1..=VERSION).contains(&version) || u16_at(6) as usize != HEADER_LEN
        {
            return Ok(SlotState::Corrupt(Damage::Header));
        }
        // Version 1 has no extra bytes (its bytes 35..40 are reserved, zero).
        let extra = u32_at(35) as usize;
        let (seq, fingerprint) = (u32_at(8), u32_at(12));
        let (p, s) = (u32_at(16) as usize, u32_at(20) as usize);
        let (optim_steps, train_steps) = (u32_at(24), u32_at(28));
        let width = h[32] as usize;
        let w = F::WRITE_SIZE;
        let values = p.checked_add(s).and_then(|n| n.checked_mul(width));
        let body = values
            .and_then(|n| n.checked_add(HEADER_LEN))
            .and_then(|n| n.checked_add(extra));
        let (values, body) = match (values, body) {
            (Some(v), Some(b)) if (width == 4 || width == 8) && h[39] == 0 => (HEADER_LEN + v, b),
            _ => return Ok(SlotState::Corrupt(Damage::Header)),
        };
        let commit_at = round_up(body + CRC_LEN, w);
        if commit_at.saturating_add(round_up(4, w)) > self.slot_len as usize {
            return Ok(SlotState::Corrupt(Damage::Header));
        }
        let mut word = [0u8; 4];
        // `read_with` hands out pieces of the range asked for, so every `get` below
        // is in range; checked rather than indexed, so that no panic path is linked in.
        self.read_with(slot, commit_at, 4, |at, b| {
            if let Some(dst) = word.get_mut(at - commit_at..at - commit_at + b.len()) {
                dst.copy_from_slice(b);
            }
        })?;
        if u32::from_le_bytes(word) != COMMIT {
            return Ok(SlotState::Corrupt(Damage::Uncommitted));
        }
        // One pass over header and values: CRC, and every value finite.
        let mut digest = CRC.digest();
        let mut finite = true;
        let mut val = [0u8; 8];
        let mut filled = 0usize;
        self.read_with(slot, 0, body + CRC_LEN, |at, b| {
            let in_body = body.saturating_sub(at).min(b.len());
            digest.update(&b[..in_body]);
            for (i, &byte) in b[..in_body].iter().enumerate() {
                // The values only: the header and the extra bytes are not scalars.
                if at + i < HEADER_LEN || at + i >= values {
                    continue;
                }
                if let Some(v) = val.get_mut(filled) {
                    *v = byte;
                }
                filled += 1;
                if filled == width {
                    filled = 0;
                    let ok = if width == 8 {
                        f64::from_le_bytes(val).is_finite()
                    } else {
                        f32::from_le_bytes([val[0], val[1], val[2], val[3]]).is_finite()
                    };
                    finite &= ok;
                }
            }
            for (i, &byte) in b[in_body..].iter().enumerate() {
                if let Some(w) = word.get_mut(at + in_body + i - body) {
                    *w = byte;
                }
            }
        })?;
        if digest.finalize() != u32::from_le_bytes(word) {
            return Ok(SlotState::Corrupt(Damage::Crc));
        }
        if !finite {
            return Ok(SlotState::Corrupt(Damage::NonFinite));
        }
        let compatible = fingerprint == layout.fingerprint()
            && p == layout.params()
            && s == layout.state()
            && width == layout.width
            && extra == layout.extra
            && h[33] == layout.scope_code()
            && h[34] == kind_code(layout.kind);
        if !compatible {
            return Ok(SlotState::Incompatible { seq });
        }
        Ok(SlotState::Valid(Loaded {
            slot: slot as u8,
            seq,
            optim_steps,
            train_steps,
        }))
    }

    /// Both slots' states.
    pub fn slot_states(&mut self, layout: &Layout) -> Result<[SlotState; 2], CheckpointError> {
        Ok([self.slot_state(layout, 0)?, self.slot_state(layout, 1)?])
    }

    /// The newest valid checkpoint for `layout`, without reading its values.
    pub fn newest(&mut self, layout: &Layout) -> Result<Option<Loaded>, CheckpointError> {
        let [a, b] = self.slot_states(layout)?;
        Ok(match (a, b) {
            (SlotState::Valid(x), SlotState::Valid(y)) => {
                Some(if newer(y.seq, x.seq) { y } else { x })
            }
            (SlotState::Valid(x), _) | (_, SlotState::Valid(x)) => Some(x),
            _ => None,
        })
    }

    /// Loads the newest valid checkpoint into `params` ([`Layout::params`] long) and
    /// `state` ([`Layout::state`] long) and says which it was; `None` when neither slot
    /// holds one (keep the compiled-in weights): then the buffers are untouched.
    ///
    /// Corruption is detected before anything is copied. Only a flash *driver* error
    /// during the final copy can leave the buffers partly overwritten; it is returned as
    /// [`CheckpointError::Flash`].
    pub fn load<T: Real>(
        &mut self,
        layout: &Layout,
        params: &mut [T],
        state: &mut [T],
    ) -> Result<Option<Loaded>, CheckpointError> {
        self.load_with_extra(layout, params, state, &mut |_, _| {})
    }

    /// [`Checkpoints::load`], handing each of the layout's extra bytes to
    /// `extra(index, byte)`, in order, after the values.
    pub fn load_with_extra<T: Real>(
        &mut self,
        layout: &Layout,
        params: &mut [T],
        state: &mut [T],
        extra: &mut dyn FnMut(usize, u8),
    ) -> Result<Option<Loaded>, CheckpointError> {
        if params.len() != layout.params()
            || state.len() != layout.state()
            || core::mem::size_of::<T>() != layout.width
        {
            return Err(CheckpointError::BufferLength);
        }
        self.read_values(layout, [params, state], extra)
    }

    /// Loads the newest valid checkpoint of a [`Layout::adapted`] layout straight into a
    /// model's parameter vector `params` (all of them, or the inference parameters: the
    /// [`Shape::inference_param_len`] prefix): its normalisation and its segmenter, the
    /// other parameters untouched; each extra byte goes to `extra(index, byte)`, in
    /// order. `None` (nothing changed) when neither slot holds one. `BufferLength` for
    /// a layout that is not adapted or a vector shorter than the inference parameters.
    pub fn load_adapted<T: Real>(
        &mut self,
        layout: &Layout,
        params: &mut [T],
        extra: &mut dyn FnMut(usize, u8),
    ) -> Result<Option<Loaded>, CheckpointError> {
        let (norm, seg) = adapted_parts_mut(layout, params)?;
        self.read_values(layout, [norm, seg], extra)
    }

    /// The newest valid checkpoint of `layout`, its values into `into[0]` then
    /// `into[1]` (of [`Layout::params`] + [`Layout::state`] values in all), its extra
    /// bytes to `extra`.
    fn read_values<T: Real>(
        &mut self,
        layout: &Layout,
        into: [&mut [T]; 2],
        extra: &mut dyn FnMut(usize, u8),
    ) -> Result<Option<Loaded>, CheckpointError> {
        let Some(found) = self.newest(layout)? else {
            return Ok(None);
        };
        let width = layout.width;
        let [first, second] = into;
        let np = first.len();
        let values = HEADER_LEN + layout.values_len();
        let mut val = [0u8; 8];
        let mut filled = 0usize;
        let mut index = 0usize;
        self.read_with(
            found.slot as usize,
            HEADER_LEN,
            layout.body_len() - HEADER_LEN,
            |at, b| {
                for (i, &byte) in b.iter().enumerate() {
                    if at + i >= values {
                        extra(at + i - values, byte);
                        continue;
                    }
                    // `filled < width <= 8`.
                    if let Some(v) = val.get_mut(filled) {
                        *v = byte;
                    }
                    filled += 1;
                    if filled < width {
                        continue;
                    }
                    filled = 0;
                    let v = if width == 8 {
                        T::of(f64::from_le_bytes(val))
                    } else {
                        T::of_f32(f32::from_le_bytes([val[0], val[1], val[2], val[3]]))
                    };
                    let dst = if index < np {
                        first.get_mut(index)
                    } else {
                        second.get_mut(index - np)
                    };
                    if let Some(d) = dst {
                        *d = v;
                    }
                    index += 1;
                }
            },
        )?;
        Ok(Some(found))
    }

    /// Reads `buf.len()` extra bytes from byte `from` of the extra bytes of the valid
    /// checkpoint `found` of `layout` (from [`Checkpoints::newest`]): the part a caller
    /// needs before it can take the rest (e.g. the settings its trainer is built from).
    pub fn read_extra(
        &mut self,
        layout: &Layout,
        found: &Loaded,
        from: usize,
        buf: &mut [u8],
    ) -> Result<(), CheckpointError> {
        if from.saturating_add(buf.len()) > layout.extra {
            return Err(CheckpointError::BufferLength);
        }
        let start = HEADER_LEN + layout.values_len() + from;
        self.read_with(usize::from(found.slot), start, buf.len(), |at, b| {
            if let Some(dst) = buf.get_mut(at - start..at - start + b.len()) {
                dst.copy_from_slice(b);
            }
        })
    }

    /// Saves `params` and `state` (lengths of `layout`, every value finite) with the
    /// optimiser's and the trainer's step counters, into the slot that does not hold the
    /// newest checkpoint, and verifies it. The previous checkpoint stays loadable until
    /// the new one is complete (see the module docs).
    pub fn save<T: Real>(
        &mut self,
        layout: &Layout,
        params: &[T],
        state: &[T],
        optim_steps: u32,
        train_steps: u32,
    ) -> Result<Saved, CheckpointError> {
        self.save_with_extra(layout, params, state, optim_steps, train_steps, &mut |_| {})
    }

    /// [`Checkpoints::save`] with the layout's extra bytes, which `extra` writes (in
    /// pieces) to the function it is given, after the values; anything but exactly
    /// [`Layout::extra`] bytes is [`CheckpointError::BufferLength`] (and the slot is
    /// left unfinished: the previous checkpoint stays the newest).
    pub fn save_with_extra<T: Real>(
        &mut self,
        layout: &Layout,
        params: &[T],
        state: &[T],
        optim_steps: u32,
        train_steps: u32,
        extra: ExtraWriter<'_>,
    ) -> Result<Saved, CheckpointError> {
        if params.len() != layout.params()
            || state.len() != layout.state()
            || core::mem::size_of::<T>() != layout.width
        {
            return Err(CheckpointError::BufferLength);
        }
        self.write_values(layout, [params, state], optim_steps, train_steps, extra)
    }

    /// Saves a checkpoint of a [`Layout::adapted`] layout straight from a model's
    /// parameter vector `params` (all of them, or the inference parameters): its
    /// normalisation and its segmenter, without a copy of them; the extra bytes as
    /// [`Checkpoints::save_with_extra`]'s, the trainer's step counter `train_steps`.
    /// `BufferLength` for a layout that is not adapted or a vector shorter than the
    /// inference parameters.
    pub fn save_adapted<T: Real>(
        &mut self,
        layout: &Layout,
        params: &[T],
        train_steps: u32,
        extra: ExtraWriter<'_>,
    ) -> Result<Saved, CheckpointError> {
        let (norm, seg) = adapted_parts(layout, params)?;
        self.write_values(layout, [norm, seg], 0, train_steps, extra)
    }

    /// The save of [`Checkpoints::save_with_extra`]: the values `values[0]` then
    /// `values[1]` ([`Layout::params`] + [`Layout::state`] in all, checked by the
    /// callers).
    fn write_values<T: Real>(
        &mut self,
        layout: &Layout,
        values: [&[T]; 2],
        optim_steps: u32,
        train_steps: u32,
        extra: ExtraWriter<'_>,
    ) -> Result<Saved, CheckpointError> {
        let [first, second] = values;
        let (w, e) = (F::WRITE_SIZE, F::ERASE_SIZE);
        if layout.record_len(w) > self.slot_len as usize {
            return Err(CheckpointError::SlotTooSmall);
        }
        if let Some(i) = first.iter().chain(second).position(|v| !v.is_finite()) {
            return Err(CheckpointError::NonFinite {
                index: u32::try_from(i).unwrap_or(u32::MAX),
            });
        }
        let [a, b] = self.slot_states(layout)?;
        let (slot, seq) = match (a.seq(), b.seq()) {
            (Some(x), Some(y)) if newer(y, x) => (0, y.wrapping_add(1)),
            (Some(x), Some(_)) => (1, x.wrapping_add(1)),
            (Some(x), None) => (1, x.wrapping_add(1)),
            (None, Some(y)) => (0, y.wrapping_add(1)),
            (None, None) => (0, 1),
        };
        let base = self.slot_base(slot);
        // 1. Erase, one sector at a time.
        let mut at = 0usize;
        while at < self.slot_len as usize {
            let from = base + at as u32;
            self.flash.erase(from, from + e as u32).map_err(flash_err)?;
            at += e;
        }
        // 2. Header, values, CRC.
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[8..12].copy_from_slice(&seq.to_le_bytes());
        h[12..16].copy_from_slice(&layout.fingerprint().to_le_bytes());
        h[16..20].copy_from_slice(&(layout.params() as u32).to_le_bytes());
        h[20..24].copy_from_slice(&(layout.state() as u32).to_le_bytes());
        h[24..28].copy_from_slice(&optim_steps.to_le_bytes());
        h[28..32].copy_from_slice(&train_steps.to_le_bytes());
        h[32] = layout.width as u8;
        h[33] = layout.scope_code();
        h[34] = kind_code(layout.kind);
        h[35..39].copy_from_slice(&(layout.extra as u32).to_le_bytes());
        let mut out = Stager {
            flash: &mut self.flash,
            base,
            buf: [0xFF; CHUNK],
            fill: 0,
            written: 0,
        };
        let mut digest = CRC.digest();
        digest.update(&h);
        out.put(&h)?;
        for &v in first.iter().chain(second) {
            if layout.width == 8 {
                let bytes = v.to_f64().to_le_bytes();
                digest.update(&bytes);
                out.put(&bytes)?;
            } else {
                let bytes = v.to_f32().to_le_bytes();
                digest.update(&bytes);
                out.put(&bytes)?;
            }
        }
        let (mut count, mut failed) = (0usize, None);
        extra(&mut |b: &[u8]| {
            count += b.len();
            if failed.is_none() && count <= layout.extra {
                digest.update(b);
                failed = out.put(b).err();
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if count != layout.extra {
            return Err(CheckpointError::BufferLength);
        }
        out.put(&digest.finalize().to_le_bytes())?;
        out.flush(w)?;
        // 3. The commit word, in its own write unit(s), last.
        let commit_at = layout.commit_offset(w);
        let mut unit = [0xFFu8; CHUNK];
        unit[..4].copy_from_slice(&COMMIT.to_le_bytes());
        let n = round_up(4, w);
        self.flash
            .write(base + commit_at as u32, &unit[..n])
            .map_err(flash_err)?;
        // 4. Read back.
        match self.slot_state(layout, slot)? {
            SlotState::Valid(l) if l.seq == seq => Ok(Saved {
                slot: slot as u8,
                seq,
            }),
            _ => Err(CheckpointError::Verify),
        }
    }

    /// Erases both slots (`2 slot_len / ERASE_SIZE` sector erases): afterwards
    /// [`Checkpoints::load`] returns `None`.
    pub fn erase_all(&mut self) -> Result<(), CheckpointError> {
        let e = F::ERASE_SIZE as u32;
        let mut at = self.base;
        while at < self.base + 2 * self.slot_len {
            self.flash.erase(at, at + e).map_err(flash_err)?;
            at += e;
        }
        Ok(())
    }

    /// Saves `model`'s parameters, `trainer`'s optimiser state, both step counters and
    /// the trainer's resume record ([`OnlineTrainer::write_resume`]: memory of past
    /// samples, marginal, guard), with the layout of this model and trainer
    /// ([`trainer_layout`]).
    pub fn save_trainer<T: Real>(
        &mut self,
        model: &Model<T, impl AsRef<[T]>>,
        trainer: &impl Resumable<T>,
    ) -> Result<Saved, CheckpointError> {
        self.save_trainer_after(model, trainer, &[])
    }

    /// [`Checkpoints::save_trainer`] with the caller's `prefix` bytes before the
    /// trainer's record (the layout: [`trainer_layout`] with `prefix.len()`).
    pub fn save_trainer_after<T: Real>(
        &mut self,
        model: &Model<T, impl AsRef<[T]>>,
        trainer: &impl Resumable<T>,
        prefix: &[u8],
    ) -> Result<Saved, CheckpointError> {
        let shape = model.shape();
        let layout = trainer.layout(shape, prefix.len());
        let (state, optim_steps) = trainer.optimiser_state();
        self.save_with_extra(
            &layout,
            model.params(),
            state,
            optim_steps,
            trainer.steps(),
            &mut |out| {
                out(prefix);
                trainer.write_resume(shape, out);
            },
        )
    }

    /// Restores `model`'s parameters, `trainer`'s optimiser state, step count and resume
    /// record from the newest checkpoint of [`Checkpoints::save_trainer`]: the trainer
    /// goes on exactly as if it had not stopped ([`OnlineTrainer::resume_exact`]).
    /// `None` (nothing changed) when there is none. At boot, call it after building the
    /// trainer with the configuration it was saved with; after a divergence, see
    /// [`Checkpoints::restore_if_needed`].
    pub fn restore_trainer<T: Real>(
        &mut self,
        model: &mut Model<T, impl AsRef<[T]> + AsMut<[T]>>,
        trainer: &mut impl Resumable<T>,
    ) -> Result<Option<Loaded>, CheckpointError> {
        self.restore_trainer_after(model, trainer, 0)
    }

    /// [`Checkpoints::restore_trainer`] from a checkpoint of
    /// [`Checkpoints::save_trainer_after`] with a prefix of `prefix` bytes (skipped: read
    /// it with [`Checkpoints::read_extra`]).
    pub fn restore_trainer_after<T: Real>(
        &mut self,
        model: &mut Model<T, impl AsRef<[T]> + AsMut<[T]>>,
        trainer: &mut impl Resumable<T>,
        prefix: usize,
    ) -> Result<Option<Loaded>, CheckpointError> {
        let shape = *model.shape();
        let layout = trainer.layout(&shape, prefix);
        let Some(found) = self.newest(&layout)? else {
            return Ok(None);
        };
        // The values first (the optimiser's storage is borrowed from the trainer), then
        // the record, read again from the slot a chunk at a time.
        if self
            .load(&layout, model.params_mut(), trainer.optimiser_state_mut())?
            .is_none()
        {
            return Ok(None);
        }
        let record = layout.extra().saturating_sub(prefix);
        let mut buf = [0u8; CHUNK];
        let mut at = 0usize;
        while at < record {
            let n = (record - at).min(CHUNK);
            let piece = buf.get_mut(..n).ok_or(CheckpointError::BufferLength)?;
            self.read_extra(&layout, &found, prefix + at, piece)?;
            for (i, &b) in piece.iter().enumerate() {
                trainer.set_resume_byte(&shape, at + i, b);
            }
            at += n;
        }
        trainer.resume(found.optim_steps, found.train_steps);
        Ok(Some(found))
    }

    /// The divergence hook in one call: when [`OnlineTrainer::needs_restore`] (the guard
    /// rejected `max_rejections` steps in a row), restores model, optimiser, step count
    /// and memory from the newest checkpoint of [`Checkpoints::save_trainer`] and
    /// re-arms the guard.
    pub fn restore_if_needed<T: Real>(
        &mut self,
        model: &mut Model<T, impl AsRef<[T]> + AsMut<[T]>>,
        trainer: &mut impl Resumable<T>,
    ) -> Result<Restore, CheckpointError> {
        self.restore_if_needed_after(model, trainer, 0)
    }

    /// [`Checkpoints::restore_if_needed`] for checkpoints of
    /// [`Checkpoints::save_trainer_after`] with `prefix` bytes.
    pub fn restore_if_needed_after<T: Real>(
        &mut self,
        model: &mut Model<T, impl AsRef<[T]> + AsMut<[T]>>,
        trainer: &mut impl Resumable<T>,
        prefix: usize,
    ) -> Result<Restore, CheckpointError> {
        if !trainer.needs_restore() {
            return Ok(Restore::NotNeeded);
        }
        Ok(match self.restore_trainer_after(model, trainer, prefix)? {
            Some(l) => {
                trainer.restored();
                Restore::Restored(l)
            }
            None => Restore::NoCheckpoint,
        })
    }
}

/// A trainer whose state a checkpoint keeps beside the model
/// ([`Checkpoints::save_trainer`]): its optimiser's state and step counters and its
/// resume record. [`OnlineTrainer`] is one; the trait keeps the trainer's type
/// parameters out of the store's signatures.
pub trait Resumable<T> {
    /// The layout of its checkpoints of a model of `shape`, with `prefix` bytes of the
    /// caller's before its record ([`trainer_layout`]).
    fn layout(&self, shape: &Shape, prefix: usize) -> Layout;
    /// The optimiser's state and step counter.
    fn optimiser_state(&self) -> (&[T], u32);
    /// The optimiser's state, to restore it.
    fn optimiser_state_mut(&mut self) -> &mut [T];
    /// Steps taken.
    fn steps(&self) -> u32;
    /// Writes its resume record ([`OnlineTrainer::write_resume`]).
    fn write_resume(&self, shape: &Shape, out: &mut dyn FnMut(&[u8]));
    /// Sets byte `at` of its resume record ([`OnlineTrainer::set_resume_byte`]).
    fn set_resume_byte(&mut self, shape: &Shape, at: usize, b: u8);
    /// Goes on from a restored checkpoint's step counters.
    fn resume(&mut self, optim_steps: u32, train_steps: u32);
    /// True when the divergence guard asks for a restore
    /// ([`OnlineTrainer::needs_restore`]).
    fn needs_restore(&self) -> bool;
    /// The restore happened: re-arms the guard ([`OnlineTrainer::restored`]).
    fn restored(&mut self);
}

impl<T, const D: usize, const CAP: usize, S, O, E> Resumable<T>
    for OnlineTrainer<T, D, CAP, S, O, E>
where
    T: Real,
    S: AsRef<[T]> + AsMut<[T]>,
    O: AsRef<[T]> + AsMut<[T]>,
    E: crate::train::samples::Stored<T>,
{
    fn layout(&self, shape: &Shape, prefix: usize) -> Layout {
        let cfg = self.config();
        trainer_layout::<T, D, CAP, S, O, E>(shape, cfg.scope, cfg.optim.optimiser.kind(), prefix)
    }
    fn optimiser_state(&self) -> (&[T], u32) {
        let opt = self.optimiser();
        (opt.storage().as_ref(), opt.steps())
    }
    fn optimiser_state_mut(&mut self) -> &mut [T] {
        self.optimiser_mut().storage_mut().as_mut()
    }
    fn steps(&self) -> u32 {
        OnlineTrainer::steps(self)
    }
    fn write_resume(&self, shape: &Shape, out: &mut dyn FnMut(&[u8])) {
        OnlineTrainer::write_resume(self, shape, out)
    }
    fn set_resume_byte(&mut self, shape: &Shape, at: usize, b: u8) {
        OnlineTrainer::set_resume_byte(self, shape, at, b)
    }
    fn resume(&mut self, optim_steps: u32, train_steps: u32) {
        self.optimiser_mut().set_steps(optim_steps);
        self.resume_exact(train_steps);
    }
    fn needs_restore(&self) -> bool {
        OnlineTrainer::needs_restore(self)
    }
    fn restored(&mut self) {
        OnlineTrainer::restored(self)
    }
}

/// The layout of a checkpoint of [`Checkpoints::save_trainer_after`]: the model of
/// `shape`, the optimiser `kind`'s state over `scope`, and as extra bytes `prefix`
/// bytes and the resume record of an `OnlineTrainer<T, D, CAP, S, O, E>`.
pub const fn trainer_layout<T, const D: usize, const CAP: usize, S, O, E>(
    shape: &Shape,
    scope: Scope,
    kind: OptimKind,
    prefix: usize,
) -> Layout
where
    T: Real,
    S: AsRef<[T]> + AsMut<[T]>,
    O: AsRef<[T]> + AsMut<[T]>,
    E: crate::train::samples::Stored<T>,
{
    Layout::new::<T>(*shape, scope, kind)
        .with_extra(prefix + OnlineTrainer::<T, D, CAP, S, O, E>::resume_len(shape))
}

/// The normalisation (`2 D` values) and the segmenter of a model's parameter vector
/// `params`, the values of a [`Layout::adapted`] checkpoint. `BufferLength` for another
/// layout, other scalars or a vector without them.
fn adapted_parts<'p, T>(
    layout: &Layout,
    params: &'p [T],
) -> Result<(&'p [T], &'p [T]), CheckpointError> {
    let s = &layout.shape;
    let so = s.segmenter_offset();
    if layout.adapted.is_none() || core::mem::size_of::<T>() != layout.width {
        return Err(CheckpointError::BufferLength);
    }
    match (
        params.get(..2 * s.input),
        params.get(so..so + s.segmenter_len()),
    ) {
        (Some(n), Some(g)) => Ok((n, g)),
        _ => Err(CheckpointError::BufferLength),
    }
}

/// [`adapted_parts`], writable.
fn adapted_parts_mut<'p, T>(
    layout: &Layout,
    params: &'p mut [T],
) -> Result<(&'p mut [T], &'p mut [T]), CheckpointError> {
    let s = &layout.shape;
    let (n, so, l) = (2 * s.input, s.segmenter_offset(), s.segmenter_len());
    if layout.adapted.is_none() || core::mem::size_of::<T>() != layout.width || so < n {
        return Err(CheckpointError::BufferLength);
    }
    let (front, back) = params
        .split_at_mut_checked(so)
        .ok_or(CheckpointError::BufferLength)?;
    match (front.get_mut(..n), back.get_mut(..l)) {
        (Some(n), Some(g)) => Ok((n, g)),
        _ => Err(CheckpointError::BufferLength),
    }
}

/// Buffers bytes into [`CHUNK`]-sized writes from the start of a slot.
struct Stager<'a, F> {
    flash: &'a mut F,
    base: u32,
    buf: [u8; CHUNK],
    fill: usize,
    written: usize,
}

impl<F: NorFlash> Stager<'_, F> {
    fn put(&mut self, mut bytes: &[u8]) -> Result<(), CheckpointError> {
        while !bytes.is_empty() {
            let n = (CHUNK - self.fill).min(bytes.len());
            let (head, rest) = bytes.split_at(n);
            // `fill + n <= CHUNK`; checked, so that no panic path is linked in.
            let dst = self.buf.get_mut(self.fill..self.fill + n);
            dst.ok_or(CheckpointError::BufferLength)?
                .copy_from_slice(head);
            self.fill += n;
            bytes = rest;
            if self.fill == CHUNK {
                self.flush(1)?;
            }
        }
        Ok(())
    }

    /// Writes what is buffered, padded with `0xFF` to a multiple of `w`.
    fn flush(&mut self, w: usize) -> Result<(), CheckpointError> {
        let n = round_up(self.fill, w).min(CHUNK);
        if n == 0 {
            return Ok(());
        }
        let pad = self.buf.get_mut(self.fill..n);
        pad.ok_or(CheckpointError::BufferLength)?.fill(0xFF);
        self.flash
            .write(self.base + self.written as u32, &self.buf[..n])
            .map_err(flash_err)?;
        self.written += n;
        self.fill = 0;
        self.buf = [0xFF; CHUNK];
        Ok(())
    }
}
