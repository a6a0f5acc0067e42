//! The weights: the model compiled in from `model/digits.rs` or the file named by
//! `HVAE_MODEL_RS` at build time (the host tool's `hvae export --format rust`; see
//! `build.rs`), CRC-checked at compile time and again at boot, and two flash slots that
//! `LoadWeights` fills, so that new weights survive a reset.
//!
//! Only the inference prefix of the exported parameters (normalisation, encoder,
//! segmenter: [`hvae::Shape::inference_param_len`]) is linked: the export's full
//! `PARAMS` static is read only at compile time, so the decoder's weights never reach
//! flash.
//!
//! # CRC
//! The device reports the CRC of the weight blob (`BLOB_CRC`), which covers the blob
//! header, every parameter (decoder too) and so cannot be recomputed on a device without
//! the decoder. So: at compile time, the CRC of the header and all of `PARAMS` must equal
//! the export's `BLOB_CRC` (a hand-edited or mismatched file does not build), and the
//! CRC of the header plus the linked prefix is recorded; at boot that prefix CRC is
//! recomputed from flash. A slot records both CRCs when it is written, and is used at
//! boot only if its prefix CRC checks out.

use crate::board::{FlashError, FlashWriter};
use hvae::device::{Params, Slots};
use hvae::infer::model::{ArrayModel, Model};
use hvae::protocol::{blob_header, ErrorCode};
use hvae::Shape;

/// The exported model file, as chosen by `build.rs`: `SHAPE`, `PARAM_LEN`,
/// `INFERENCE_PARAM_LEN`, `BLOB_CRC` and `PARAMS` (every parameter, decoder included).
///
/// A program that only infers reads `PARAMS` in constant expressions only (see
/// [`COMPILED`]), so the static is not linked and the decoder's weights take no flash;
/// a program that trains (`bench`, `learn`) may use it at run time.
#[allow(dead_code)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/model.rs"));
}

/// Architecture of the compiled-in model.
pub const SHAPE: Shape = generated::SHAPE;
/// Parameters linked: the inference prefix.
pub const INFER_LEN: usize = SHAPE.inference_param_len();
/// CRC-32 of the compiled-in model's weight blob.
pub const BLOB_CRC: u32 = generated::BLOB_CRC;
/// The blob header of [`SHAPE`].
pub const HEADER: [u8; hvae::store::blob::HEADER_LEN] = blob_header(&SHAPE);

const CRC_TABLE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
static CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 of the header followed by the first `n` of `params`, at compile time.
const fn const_crc(params: &[f32], n: usize) -> u32 {
    let mut d = CRC_TABLE.digest();
    d.update(&HEADER);
    let mut i = 0;
    while i < n {
        d.update(&params[i].to_le_bytes());
        i += 1;
    }
    d.finalize()
}

const _: () = assert!(
    const_crc(&generated::PARAMS, SHAPE.param_len()) == BLOB_CRC,
    "the compiled-in model file: PARAMS do not match BLOB_CRC"
);

/// CRC of the header and the inference prefix of the compiled-in weights.
pub const PREFIX_CRC: u32 = const_crc(&generated::PARAMS, INFER_LEN);

/// The first `N` of `all`, at compile time (a model's inference prefix).
pub const fn prefix<const N: usize>(all: &[f32]) -> [f32; N] {
    let mut out = [0.0; N];
    let mut i = 0;
    while i < N {
        out[i] = all[i];
        i += 1;
    }
    out
}

/// The compiled-in model (inference prefix only), built and checked at compile time.
pub static COMPILED: ArrayModel<INFER_LEN> = Model::from_array(SHAPE, prefix(&generated::PARAMS));

/// CRC of the blob header followed by `params`, computed from memory (flash).
pub fn prefix_crc(params: &[f32]) -> u32 {
    crc_of(params.iter().copied())
}

/// CRC of the blob header followed by `values` (a blob's CRC when `values` are all the
/// parameters; [`prefix_crc`] when they are the inference prefix).
pub fn crc_of(values: impl Iterator<Item = f32>) -> u32 {
    let mut d = CRC.digest();
    d.update(&HEADER);
    for v in values {
        d.update(&v.to_le_bytes());
    }
    d.finalize()
}

/// The `adapt` program's model (`model/digits_m0.rs`, from `model/regen.sh`): the digits
/// with 16 hidden units, whose weights and the engine fit the micro:bit's 16 KiB of
/// RAM. Linked only into the programs that use it.
pub mod m0 {
    #[allow(dead_code)]
    mod generated {
        include!("../model/digits_m0.rs");
    }
    pub use generated::{BLOB_CRC, PARAMS, SHAPE};
    /// Parameters of the inference prefix (no decoder).
    pub const INFER_LEN: usize = SHAPE.inference_param_len();
    /// The model's inference prefix, built and checked at compile time.
    pub static COMPILED: hvae::ArrayModel<INFER_LEN> =
        hvae::Model::from_array(SHAPE, super::prefix(&PARAMS));
}

/// Where the weights in use come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The compiled-in weights.
    Compiled,
    /// Slot `index`, written `seq`-th.
    Slot {
        /// 0 or 1.
        index: usize,
        /// Write sequence number (the higher wins at boot).
        seq: u32,
    },
}

/// Weights in use: the parameters (the inference prefix, in flash), where they live and
/// the CRC of their blob.
#[derive(Clone, Copy, Debug)]
pub struct Active {
    /// The parameters: every one finite.
    pub params: &'static [f32],
    /// Where its parameters live.
    pub source: Source,
    /// CRC of its weight blob.
    pub blob_crc: u32,
}

/// Checks the compiled-in weights against [`PREFIX_CRC`].
pub fn compiled() -> Result<Active, &'static str> {
    let params: &'static [f32] = COMPILED.params();
    if prefix_crc(params) != PREFIX_CRC {
        return Err("compiled-in weights fail their CRC");
    }
    // Checked finite when the compiled-in model was built (at compile time).
    Ok(Active {
        params,
        source: Source::Compiled,
        blob_crc: BLOB_CRC,
    })
}

/// Marks a complete slot; written last.
const SLOT_MAGIC: u32 = 0x534C_5631; // "1VLS"
/// Slot header: magic, sequence number, blob CRC, prefix CRC.
const SLOT_HEADER: usize = 16;
/// Bytes per slot (16 flash pages on both boards).
pub const SLOT_LEN: usize = 16 * 1024;
const _: () = assert!(
    SLOT_HEADER + 4 * INFER_LEN <= SLOT_LEN,
    "weights do not fit a slot"
);

extern "C" {
    static _hvae_slots_start: u32;
}

/// Address of slot `index` (0 or 1; larger values mean 1). memory.x asserts at link
/// time that `SLOTS` holds two slots.
pub fn slot_addr(index: usize) -> usize {
    // A linker symbol from memory.x; only its address is used (never read).
    let start = core::ptr::addr_of!(_hvae_slots_start) as usize;
    start + index.min(1) * SLOT_LEN
}

fn read_word(addr: usize) -> u32 {
    // SAFETY: `addr` is inside a slot (in flash), 4-aligned.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// The parameters stored in slot `index`, as a `'static` slice of flash.
///
/// The slice aliases flash that [`SlotWriter`] programs: the service never writes the
/// slot it runs from, and drops a slot's model before erasing that slot.
fn slot_params(index: usize) -> &'static [f32] {
    let addr = slot_addr(index) + SLOT_HEADER;
    // SAFETY: INFER_LEN floats fit the slot (checked above); flash is 4-aligned, always
    // mapped, and every bit pattern is an f32.
    unsafe { core::slice::from_raw_parts(addr as *const f32, INFER_LEN) }
}

/// Slot `index`, if it holds a complete, CRC-clean, finite model.
pub fn slot(index: usize) -> Option<Active> {
    let base = slot_addr(index);
    if read_word(base) != SLOT_MAGIC {
        return None;
    }
    let seq = read_word(base + 4);
    let blob_crc = read_word(base + 8);
    let params = slot_params(index);
    if prefix_crc(params) != read_word(base + 12) {
        return None;
    }
    if !params.iter().all(|v| v.is_finite()) {
        return None;
    }
    Some(Active {
        params,
        source: Source::Slot { index, seq },
        blob_crc,
    })
}

/// The weights to run after a reset: the valid slot written last, else the compiled-in
/// weights.
pub fn boot() -> Result<Active, &'static str> {
    let a = slot(0);
    let b = slot(1);
    let newest = match (a, b) {
        (Some(a), Some(b)) => Some(if seq(&b) > seq(&a) { b } else { a }),
        (a, b) => a.or(b),
    };
    match newest {
        Some(s) => Ok(s),
        None => compiled(),
    }
}

fn seq(a: &Active) -> u32 {
    match a.source {
        Source::Slot { seq, .. } => seq,
        Source::Compiled => 0,
    }
}

/// Writes a new model into a slot the device is not running from: erase, values as they
/// arrive, then the header (magic last) once the whole blob checked out.
#[derive(Debug)]
pub struct SlotWriter {
    index: usize,
}

impl SlotWriter {
    /// Erases the slot that `running` does not use and prepares to fill it.
    pub fn begin<F: FlashWriter>(flash: &mut F, running: &Active) -> Result<Self, FlashError> {
        let index = match running.source {
            Source::Slot { index, .. } => 1 - index,
            Source::Compiled => 0,
        };
        let base = slot_addr(index);
        for page in (base..base + SLOT_LEN).step_by(F::PAGE) {
            flash.erase_page(page)?;
        }
        Ok(SlotWriter { index })
    }

    /// Stores parameter `index` (values past the inference prefix are not kept).
    pub fn put<F: FlashWriter>(
        &self,
        flash: &mut F,
        index: usize,
        value: f32,
    ) -> Result<(), FlashError> {
        if index >= INFER_LEN {
            return Ok(());
        }
        let addr = slot_addr(self.index) + SLOT_HEADER + 4 * index;
        flash.write_word(addr, value.to_bits())
    }

    /// Seals the slot after the whole blob checked out (CRC `blob_crc`) and returns it as
    /// the weights to run.
    pub fn commit<F: FlashWriter>(
        self,
        flash: &mut F,
        blob_crc: u32,
        running: &Active,
    ) -> Result<Active, FlashError> {
        let base = slot_addr(self.index);
        let crc = prefix_crc(slot_params(self.index));
        flash.write_word(base + 4, seq(running).wrapping_add(1))?;
        flash.write_word(base + 8, blob_crc)?;
        flash.write_word(base + 12, crc)?;
        flash.write_word(base, SLOT_MAGIC)?;
        slot(self.index).ok_or(FlashError)
    }
}

/// Erases both slots: the next boot runs the compiled-in weights.
pub fn erase_slots<F: FlashWriter>(flash: &mut F) -> Result<(), FlashError> {
    let base = slot_addr(0);
    for page in (base..base + 2 * SLOT_LEN).step_by(F::PAGE) {
        flash.erase_page(page)?;
    }
    Ok(())
}

/// The weights of an inference device as the core's engine holds them
/// ([`hvae::device::Params`]): the parameters in use, in flash (compiled in or in a
/// slot), and the two slots a `LoadWeights` blob fills ([`hvae::device::Slots`]).
pub struct FlashWeights<F> {
    active: Active,
    writing: Option<SlotWriter>,
    flash: F,
}

impl<F: FlashWriter> FlashWeights<F> {
    /// The weights `active`, with `flash` to write the slots.
    pub fn new(active: Active, flash: F) -> Self {
        FlashWeights {
            active,
            writing: None,
            flash,
        }
    }

    /// The weights in use: where they live and their blob's CRC.
    pub fn active(&self) -> &Active {
        &self.active
    }
}

impl<F> AsRef<[f32]> for FlashWeights<F> {
    fn as_ref(&self) -> &[f32] {
        self.active.params
    }
}

impl<F: FlashWriter> Params for FlashWeights<F> {
    fn writable(&mut self) -> Option<&mut [f32]> {
        None
    }

    fn slots(&mut self) -> Option<&mut dyn Slots> {
        Some(self)
    }
}

impl<F: FlashWriter> Slots for FlashWeights<F> {
    fn begin(&mut self) -> Result<(), ErrorCode> {
        self.writing = None;
        let w = SlotWriter::begin(&mut self.flash, &self.active).map_err(|_| ErrorCode::Storage)?;
        self.writing = Some(w);
        Ok(())
    }

    fn put(&mut self, index: usize, word: u32) -> Result<(), ErrorCode> {
        let w = self
            .writing
            .as_ref()
            .ok_or(ErrorCode::LoadOrder { expected: 0 })?;
        w.put(&mut self.flash, index, f32::from_bits(word))
            .map_err(|_| ErrorCode::Storage)
    }

    fn commit(&mut self, crc: u32) -> Result<(), ErrorCode> {
        let w = self
            .writing
            .take()
            .ok_or(ErrorCode::LoadOrder { expected: 0 })?;
        self.active = w
            .commit(&mut self.flash, crc, &self.active)
            .map_err(|_| ErrorCode::Storage)?;
        Ok(())
    }
}
