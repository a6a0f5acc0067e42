//! The weights: the model compiled in from `model/digits.hvae` or the blob named by
//! `HVAE_MODEL` at build time (`build.rs` writes its Rust source, as `hvae export
//! --format rust` does), CRC-checked at compile time and again at boot, and two flash
//! slots that `LoadWeights` fills, so that new weights survive a reset. What a slot
//! keeps is a [`Content`]: the `f32` model's inference prefix ([`F32`]), or all of an
//! int8 blob's words ([`int8`], `cluster_int8`'s compiled-in int8 model and slots).
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
    // SAFETY: the bytes of `params` (every byte of an f32 is a u8; little-endian, as
    // the blob stores them).
    let bytes =
        unsafe { core::slice::from_raw_parts(params.as_ptr().cast::<u8>(), 4 * params.len()) };
    crc_after(&HEADER, bytes)
}

/// CRC of `header` followed by `bytes`.
fn crc_after(header: &[u8], bytes: &[u8]) -> u32 {
    let mut d = CRC.digest();
    d.update(header);
    d.update(bytes);
    d.finalize()
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

/// The `adapt` program's model (`model/digits_m0.hvae`, from `model/regen.sh`, its
/// source written by `build.rs`): the digits with 16 hidden units, whose weights and the
/// engine fit the micro:bit's 16 KiB of RAM. Linked only into the programs that use it.
pub mod m0 {
    #[allow(dead_code)]
    mod generated {
        include!(concat!(env!("OUT_DIR"), "/model_m0.rs"));
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

/// Weights in use: the parameters (in flash: compiled in or in a slot), where they live
/// and the CRC of their blob. `W` is what the engine serves: the `f32` inference prefix
/// (by default), or the int8 model ([`int8`]).
#[derive(Clone, Copy, Debug)]
pub struct Active<W = &'static [f32]> {
    /// The parameters: every one finite (of the int8 model: every value checked).
    pub params: W,
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

/// What a weight slot keeps of a `LoadWeights` blob: its words after the header, as they
/// arrive, up to [`Content::WORDS`] (the `f32` model's inference prefix, [`F32`]; all of
/// an int8 blob, [`int8::Int8`]), and how they form the weights the engine serves.
pub trait Content {
    /// The blob header the CRC of a slot's words starts from.
    const HEADER: &'static [u8];
    /// Words a slot keeps.
    const WORDS: usize;
    /// The weights, as the engine serves them.
    type Weights: Clone;
    /// The weights of the [`Content::WORDS`] words at `addr` (in flash, 4-aligned), or
    /// why they do not form a model.
    fn weights(addr: usize) -> Result<Self::Weights, ErrorCode>;
}

/// The `f32` model's slots: the inference prefix (no decoder), every value finite.
#[derive(Clone, Copy, Debug)]
pub struct F32;

impl Content for F32 {
    const HEADER: &'static [u8] = &HEADER;
    const WORDS: usize = INFER_LEN;
    type Weights = &'static [f32];
    fn weights(addr: usize) -> Result<&'static [f32], ErrorCode> {
        // SAFETY: `addr` is a slot's words, INFER_LEN of them (checked to fit a slot),
        // in flash: 4-aligned, always mapped; every bit pattern is an f32. The slice
        // aliases flash that `SlotWriter` programs: the service never writes the slot it
        // runs from, and drops a slot's model before erasing that slot.
        let params = unsafe { core::slice::from_raw_parts(addr as *const f32, INFER_LEN) };
        if !params.iter().all(|v| v.is_finite()) {
            return Err(ErrorCode::NonFiniteWeight { index: 0 });
        }
        Ok(params)
    }
}

/// Marks a complete slot; written last.
const SLOT_MAGIC: u32 = 0x534C_5631; // "1VLS"
/// Slot header: magic, sequence number, blob CRC, CRC of the header and the words kept.
const SLOT_HEADER: usize = 16;
/// Bytes per slot (16 flash pages on both boards).
pub const SLOT_LEN: usize = 16 * 1024;

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

/// CRC of `C`'s blob header followed by the words of slot `index`.
fn words_crc<C: Content>(index: usize) -> u32 {
    let addr = slot_addr(index) + SLOT_HEADER;
    // SAFETY: a slot holds its header and `C::WORDS` words (checked where a slot is
    // written, `SlotWriter::begin`); flash is always mapped and every byte is a u8.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, 4 * C::WORDS) };
    crc_after(C::HEADER, bytes)
}

/// Slot `index`, if it holds a complete, CRC-clean model.
pub fn slot<C: Content>(index: usize) -> Option<Active<C::Weights>> {
    let base = slot_addr(index);
    if read_word(base) != SLOT_MAGIC {
        return None;
    }
    let seq = read_word(base + 4);
    let blob_crc = read_word(base + 8);
    if words_crc::<C>(index) != read_word(base + 12) {
        return None;
    }
    Some(Active {
        params: C::weights(base + SLOT_HEADER).ok()?,
        source: Source::Slot { index, seq },
        blob_crc,
    })
}

/// The weights to run after a reset: the valid slot written last, else the compiled-in
/// weights.
pub fn boot() -> Result<Active, &'static str> {
    boot_with::<F32>(compiled)
}

/// [`boot`] for slots of `C`, with its compiled-in weights from `compiled`.
pub fn boot_with<C: Content>(
    compiled: impl FnOnce() -> Result<Active<C::Weights>, &'static str>,
) -> Result<Active<C::Weights>, &'static str> {
    let a = slot::<C>(0);
    let b = slot::<C>(1);
    let newest = match (a, b) {
        (Some(a), Some(b)) => Some(if seq(&b) > seq(&a) { b } else { a }),
        (a, b) => a.or(b),
    };
    match newest {
        Some(s) => Ok(s),
        None => compiled(),
    }
}

fn seq<W>(a: &Active<W>) -> u32 {
    match a.source {
        Source::Slot { seq, .. } => seq,
        Source::Compiled => 0,
    }
}

/// Writes a new model into a slot the device is not running from: erase, words as they
/// arrive, then (once the whole blob checked out and its words form a model) the
/// header, magic last.
#[derive(Debug)]
pub struct SlotWriter {
    index: usize,
}

impl SlotWriter {
    /// Erases the slot that `running` does not use and prepares to fill it.
    pub fn begin<F: FlashWriter, W>(
        flash: &mut F,
        running: &Active<W>,
    ) -> Result<Self, FlashError> {
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

    /// Stores word `index` of the blob after its header (words past the ones `C` keeps
    /// are not kept).
    pub fn put<C: Content, F: FlashWriter>(
        &self,
        flash: &mut F,
        index: usize,
        word: u32,
    ) -> Result<(), FlashError> {
        const {
            assert!(
                SLOT_HEADER + 4 * C::WORDS <= SLOT_LEN,
                "weights do not fit a slot"
            )
        };
        if index >= C::WORDS {
            return Ok(());
        }
        let addr = slot_addr(self.index) + SLOT_HEADER + 4 * index;
        flash.write_word(addr, word)
    }

    /// Seals the slot after the whole blob checked out (CRC `blob_crc`) and returns it as
    /// the weights to run; refused, the slot unsealed, when its words do not form a
    /// model (`C::weights`' error) or the flash fails (`Storage`).
    pub fn commit<C: Content, F: FlashWriter, W>(
        self,
        flash: &mut F,
        blob_crc: u32,
        running: &Active<W>,
    ) -> Result<Active<C::Weights>, ErrorCode> {
        let base = slot_addr(self.index);
        C::weights(base + SLOT_HEADER)?;
        let crc = words_crc::<C>(self.index);
        let seal = |flash: &mut F| -> Result<(), FlashError> {
            flash.write_word(base + 4, seq(running).wrapping_add(1))?;
            flash.write_word(base + 8, blob_crc)?;
            flash.write_word(base + 12, crc)?;
            flash.write_word(base, SLOT_MAGIC)
        };
        seal(flash).map_err(|_| ErrorCode::Storage)?;
        slot::<C>(self.index).ok_or(ErrorCode::Storage)
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

/// The weights of an inference device as the core's engine holds them: the weights in
/// use, in flash (compiled in or in a slot), and the two slots a `LoadWeights` blob
/// fills ([`hvae::device::Slots`]). Of the `f32` model ([`F32`]) they are the
/// [`hvae::device::Params`] of a `Model`; of the int8 model ([`int8::Int8`]), the
/// [`hvae::device::Int8Weights`] of the engine's [`hvae::device::Int8`].
pub struct FlashWeights<F, C: Content = F32> {
    active: Active<C::Weights>,
    writing: Option<SlotWriter>,
    flash: F,
}

impl<F: FlashWriter, C: Content> FlashWeights<F, C> {
    /// The weights `active`, with `flash` to write the slots.
    pub fn new(active: Active<C::Weights>, flash: F) -> Self {
        FlashWeights {
            active,
            writing: None,
            flash,
        }
    }

    /// The weights in use: where they live and their blob's CRC.
    pub fn active(&self) -> &Active<C::Weights> {
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

impl<F: FlashWriter, C: Content> Slots for FlashWeights<F, C> {
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
        w.put::<C, F>(&mut self.flash, index, word)
            .map_err(|_| ErrorCode::Storage)
    }

    fn commit(&mut self, crc: u32) -> Result<(), ErrorCode> {
        let w = self
            .writing
            .take()
            .ok_or(ErrorCode::LoadOrder { expected: 0 })?;
        self.active = w.commit::<C, F, _>(&mut self.flash, crc, &self.active)?;
        Ok(())
    }
}

/// The int8 model (`model/digits_int8.hvae`, `hvae export --quantize int8 --format bin`;
/// its Rust source written by `build.rs`), compiled in, and the int8 slots of
/// `cluster_int8`: every word of an int8 blob after its header (weights, channels,
/// reals), formed into a [`hvae::QuantModel`] that checks every value. Linked only into
/// the programs that use it.
pub mod int8 {
    use super::{Active, Content, FlashWeights, Source};
    use crate::board::FlashWriter;
    use hvae::device::{int8_words, Int8Weights, Slots};
    use hvae::infer::quant::{float_len, int_len, weight_len};
    use hvae::protocol::{int8_blob_header, ErrorCode};
    use hvae::store::blob::HEADER_LEN_INT8;
    use hvae::{QuantModel, Shape};

    /// The exported file's items: its shape, lengths, `BLOB_CRC` and arrays.
    #[allow(dead_code)]
    pub mod generated {
        include!(concat!(env!("OUT_DIR"), "/model_int8.rs"));
    }
    pub use generated::BLOB_CRC;

    /// Architecture of the int8 model.
    pub const SHAPE: Shape = generated::SHAPE;
    /// The int8 blob header of [`SHAPE`].
    pub const HEADER: [u8; HEADER_LEN_INT8] = int8_blob_header(&SHAPE);
    /// The int8 model over its three vectors in flash.
    pub type FlashModel = QuantModel<&'static [i8], &'static [i32], &'static [f32]>;

    /// The int8 model's slots: all of an int8 blob's words.
    #[derive(Clone, Copy, Debug)]
    pub struct Int8;

    const W: usize = weight_len(&SHAPE);
    const W_WORDS: usize = W.div_ceil(4);
    const I: usize = int_len(&SHAPE);
    const F: usize = float_len(&SHAPE);

    impl Content for Int8 {
        const HEADER: &'static [u8] = &HEADER;
        const WORDS: usize = int8_words(&SHAPE);
        type Weights = FlashModel;
        fn weights(addr: usize) -> Result<FlashModel, ErrorCode> {
            // SAFETY: `addr` is a slot's words (int8_words of them, checked to fit a
            // slot), in flash: 4-aligned, always mapped, every bit pattern a valid i8,
            // i32 and f32; the ints start after the padded weights, 4-aligned. The
            // slices alias flash that `SlotWriter` programs: the service never writes
            // the slot it runs from.
            let (w, i, f) = unsafe {
                (
                    core::slice::from_raw_parts(addr as *const i8, W),
                    core::slice::from_raw_parts((addr + 4 * W_WORDS) as *const i32, I),
                    core::slice::from_raw_parts((addr + 4 * (W_WORDS + I)) as *const f32, F),
                )
            };
            QuantModel::new(SHAPE, w, i, f).map_err(ErrorCode::from)
        }
    }

    /// CRC-32 of the int8 blob of the compiled-in vectors, at compile time.
    const fn const_crc() -> u32 {
        let mut d = super::CRC_TABLE.digest();
        d.update(&HEADER);
        let mut i = 0;
        while i < W {
            d.update(&generated::WEIGHTS[i].to_le_bytes());
            i += 1;
        }
        while i < 4 * W_WORDS {
            d.update(&[0]);
            i += 1;
        }
        i = 0;
        while i < I {
            d.update(&generated::INTS[i].to_le_bytes());
            i += 1;
        }
        i = 0;
        while i < F {
            d.update(&generated::FLOATS[i].to_le_bytes());
            i += 1;
        }
        d.finalize()
    }

    const _: () = assert!(
        const_crc() == BLOB_CRC,
        "the compiled-in int8 model file: its vectors do not match BLOB_CRC"
    );

    /// The compiled-in int8 model (its CRC checked at compile time), its values checked
    /// ([`hvae::QuantModel::new`]).
    pub fn compiled() -> Result<Active<FlashModel>, &'static str> {
        let model = QuantModel::new(
            SHAPE,
            &generated::WEIGHTS[..],
            &generated::INTS[..],
            &generated::FLOATS[..],
        )
        .map_err(|_| "the compiled-in int8 model is not a model")?;
        Ok(Active {
            params: model,
            source: Source::Compiled,
            blob_crc: BLOB_CRC,
        })
    }

    impl<Fl: FlashWriter> Int8Weights for FlashWeights<Fl, Int8> {
        type W = &'static [i8];
        type I = &'static [i32];
        type F = &'static [f32];
        fn model(&self) -> &FlashModel {
            &self.active().params
        }
        fn slots(&mut self) -> Option<&mut dyn Slots> {
            Some(self)
        }
    }
}
