//! hvae on a BBC micro:bit v2: read the LSM303AGR accelerometer over the internal I2C bus
//! (through the `lsm303agr` embedded-hal driver), cut the stream into windows, turn each
//! window into features ([`hvae_accel_features`]), let a compiled-in hvae model say which
//! cluster each window belongs to and how novel it is, and **keep learning**: the model's
//! input normalisation and its segmenter's centres adapt to the board's stream, and what
//! they learned is saved in the board's flash and restored after a reset
//! ([`hvae_board_adapt`]). The log is defmt over RTT (`probe-rs run --chip nRF52833_xxAA
//! <elf>` decodes and shows it):
//!
//! ```text
//! INFO  restored what was learned: checkpoint 12 (slot 1), 48000 windows
//! INFO  window 17: cluster 3 (walking) p = 0.98, novelty 0.041
//! INFO  window 18: cluster 0 (shaking) p = 0.91, novelty 0.312 NOVEL
//! INFO  saved what was learned: checkpoint 13 (slot 0), 4096 windows
//! ```
//!
//! # The model
//!
//! 12 features -> 16 -> S^2, K = 4, trained on synthetic windows of four activities by
//! `model/make_model.py`; the names below are the activities its clusters matched there.
//! Two builds: `f32` (default, [`model`], the weight blob `model/acc.hvae`) and int8
//! (`--features int8`, `model_int8`, the int8 blob `model/acc_int8.hvae`: int8 weights,
//! `f32` normalisation and segmenter). `build.rs` writes each blob's Rust source with
//! the core's writer, as `hvae export --format rust` would. Both adapt the same way: the
//! int8 model's normalisation and segmenter are `f32` too (`hvae_board_adapt::Int8`). To
//! regenerate the int8 blob from `model/acc.hvae` (from the repository root; the
//! calibration rows are the training windows):
//!
//! ```sh
//! python3 boards/microbit-v2/model/make_model.py > /tmp/acc.csv
//! cargo run --release -p hvae-host-tools -- export --model boards/microbit-v2/model/acc.hvae \
//!     --quantize int8 --data /tmp/acc.csv --check --format bin \
//!     --out boards/microbit-v2/model/acc_int8.hvae
//! ```
//!
//! # Learning on the board
//!
//! Every window updates the normalisation (forgetting over about 200 windows) and, unless
//! it is novel (novelty above [`NOVELTY_FLAG`]: an unknown movement must not drag a known
//! activity's centre), moves the centre of its cluster by online k-means (1/200 of the
//! way once a centre's count is full). All four slots are in use, so no centre is spawned
//! and none retires (a rare activity is not forgotten). The rule and its parts are
//! `hvae_board_adapt`'s docs.
//!
//! # Across resets
//!
//! Every [`SAVE_EVERY`] windows (16,384 windows of 0.64 s: about 2.9 hours) the
//! normalisation and the segmenter (41 values) are saved into one of two 4 KiB flash
//! pages at the end of flash (`memory.x`; the core's A/B checkpoints: CRC, commit word,
//! sequence number), the two pages in turn. At boot the newest valid checkpoint of the
//! same model (shape and weight CRC) is restored; a corrupt page is skipped, a checkpoint
//! of another model is ignored (the compiled-in values are used, and the next save
//! overwrites it). Flash wear: each save erases one page, so each page is erased once
//! every `2 x 16,384` windows, about 5.8 hours; at the nRF52833's 10,000 erase cycles
//! per page that is about 58,000 hours, 6.6 years of learning without a pause. A reset
//! loses at most the last 2.9 hours, while the state itself follows the stream over a
//! few minutes: what is kept is the slow part (a sensor's drift, where the activities
//! sit). A save
//! stops the CPU for the page erase and the write (the NVMC halts it), a few
//! accelerometer samples late: the next window just starts later.
//!
//! Nothing the sensor, the model or the flash returns can make the program panic: every
//! error is a log line, and the program goes on (without saving when the flash fails,
//! without adapting when the model refuses a window).

#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod flash;
/// The `f32` model: `model/acc.hvae`'s Rust source, written by `build.rs`.
#[cfg(not(feature = "int8"))]
#[allow(clippy::all)]
mod model {
    include!(concat!(env!("OUT_DIR"), "/model.rs"));
}
/// The int8 model: `model/acc_int8.hvae`'s Rust source, written by `build.rs`.
#[cfg(feature = "int8")]
#[allow(clippy::all)]
mod model_int8 {
    include!(concat!(env!("OUT_DIR"), "/model_int8.rs"));
}

use cortex_m_rt::entry;
use hvae::train::centres::SpawnRule;
use hvae_accel_features::{Window, FEATURES};
use hvae_board_adapt::{Adaptable, Learner, Persist, Restored, Settings};
use lsm303agr::{AccelMode, AccelOutputDataRate, Lsm303agr};
use microbit::hal::twim::{self, Twim};
use microbit::hal::Timer;
use microbit::Board;
// The global logger (defmt over RTT) and the panic handler (message through defmt).
use defmt_rtt as _;
use panic_probe as _;

#[cfg(not(feature = "int8"))]
use model::{BLOB_CRC, SHAPE};
#[cfg(feature = "int8")]
use model_int8::{BLOB_CRC, SHAPE};

// The exported model must take this crate's features.
const _: () = assert!(SHAPE.input == FEATURES);

/// Name of each cluster: the synthetic activity it gathered in `model/make_model.py`'s
/// data (found with `hvae_ref.py segment` on one window of each activity).
const CLUSTER_NAMES: [&str; SHAPE.clusters] =
    ["shaking", "held upright", "resting flat", "walking"];

/// Novelty (`1 - cosine` to the nearest centre) above which a window is flagged, and
/// moves no centre: several times the training windows' mean (docs/device.md).
const NOVELTY_FLAG: f32 = 0.25;

/// Windows between two saves of what was learned (flash wear: the module docs).
const SAVE_EVERY: u32 = 16_384;

/// How the board learns (the rule: `hvae_board_adapt`).
const SETTINGS: Settings = Settings {
    // A full centre moves 1/200 of the way to each window's direction.
    memory: 200.0,
    // The normalisation weighs about the last 200 windows (the device engine's
    // `NORM_DECAY`, per window here).
    decay: 0.995,
    spawn: SpawnRule {
        threshold: NOVELTY_FLAG,
        // Half of the last 32 windows (about 20 s) novel: a new activity, not a bump.
        window: 32,
        count: 16,
    },
    save_every: SAVE_EVERY,
    seed: 0x6d62_6974, // "mbit"
};

/// Values adapted and saved: normalisation (offset, scale) and segmenter.
const ADAPTED: usize = 2 * SHAPE.input + SHAPE.segmenter_len();

type Flash = microbit::hal::nvmc::Nvmc<microbit::pac::NVMC>;

// The two checkpoint slots fill the reserved pages exactly.
const _: () = assert!(2 * Persist::<Flash, ADAPTED>::slot_len(&SHAPE) == flash::REGION_LEN);

/// Stops with a message when the board cannot start (no sensor, peripherals taken).
fn halt(why: &str) -> ! {
    defmt::error!("halted: {=str}", why);
    loop {
        cortex_m::asm::wfi();
    }
}

/// A probability or a novelty in the log with `digits` (2 or 3) decimals: defmt formats
/// on the host, where an `f32` argument would print with all its digits.
struct Fixed(f32, u8);

impl defmt::Format for Fixed {
    fn format(&self, f: defmt::Formatter<'_>) {
        let Fixed(v, digits) = *self;
        if !v.is_finite() || v.abs() >= 1.0e6 {
            defmt::write!(f, "{=f32}", v);
            return;
        }
        let sign = if v < 0.0 { "-" } else { "" };
        if digits == 2 {
            let n = (v.abs() * 100.0 + 0.5) as u32;
            defmt::write!(f, "{=str}{=u32}.{=u32:02}", sign, n / 100, n % 100);
        } else {
            let n = (v.abs() * 1000.0 + 0.5) as u32;
            defmt::write!(f, "{=str}{=u32}.{=u32:03}", sign, n / 1000, n % 1000);
        }
    }
}

/// The compiled-in `f32` model, its inference parameters (no decoder) copied to RAM,
/// where adaptation changes them.
#[cfg(not(feature = "int8"))]
fn compiled_in() -> Option<hvae::Model<f32, [f32; model::INFERENCE_PARAM_LEN]>> {
    let params = model::PARAMS.first_chunk::<{ model::INFERENCE_PARAM_LEN }>()?;
    hvae::Model::new(SHAPE, *params).ok()
}

/// The compiled-in int8 model: weights and integers in flash, its reals (normalisation,
/// scales, segmenter) copied to RAM, where adaptation changes them.
#[cfg(feature = "int8")]
fn compiled_in() -> Option<
    hvae_board_adapt::Int8<&'static [i8], &'static [i32], FEATURES, { model_int8::FLOAT_LEN }>,
> {
    hvae_board_adapt::Int8::new(
        SHAPE,
        &model_int8::WEIGHTS[..],
        &model_int8::INTS[..],
        model_int8::FLOATS,
    )
    .ok()
}

#[entry]
fn main() -> ! {
    let Some(board) = Board::take() else {
        halt("peripherals already taken")
    };
    let mut timer = Timer::new(board.TIMER0);
    let i2c = Twim::new(
        board.TWIM0,
        board.i2c_internal.into(),
        twim::Frequency::K100,
    );
    let mut sensor = Lsm303agr::new_with_i2c(i2c);
    if sensor.init().is_err() {
        halt("the LSM303AGR does not answer on the internal I2C bus");
    }
    if sensor
        .set_accel_mode_and_odr(
            &mut timer,
            AccelMode::HighResolution,
            AccelOutputDataRate::Hz50,
        )
        .is_err()
    {
        halt("cannot set the accelerometer to 50 Hz");
    }

    let Some(mut model) = compiled_in() else {
        halt("the compiled-in model is invalid")
    };
    defmt::info!(
        "hvae on micro:bit v2 ({=str}): model CRC {=u32:#010x}, {=usize} features -> S^{=usize}, K = {=usize}",
        if cfg!(feature = "int8") { "int8" } else { "f32" },
        BLOB_CRC,
        FEATURES,
        SHAPE.latent - 1,
        SHAPE.clusters
    );

    // What was learned before the reset, if anything of this model is in flash.
    let flash = flash::checkpoint_flash(board.NVMC);
    let mut store = match Persist::<Flash, ADAPTED>::new(flash, SHAPE, BLOB_CRC) {
        Ok(s) => Some(s),
        Err(e) => {
            defmt::error!("checkpoint pages unusable ({}): learning is not kept", e);
            None
        }
    };
    if let Some(s) = store.as_mut() {
        match s.restore(&mut model) {
            Ok(Restored::From(l)) => defmt::info!(
                "restored what was learned: checkpoint {=u32} (slot {=u8}), {=u32} windows",
                l.seq,
                l.slot,
                l.train_steps
            ),
            Ok(Restored::None) => {
                defmt::info!("no checkpoint of this model: starting from the compiled-in one")
            }
            Err(e) => defmt::warn!(
                "restore failed ({}): starting from the compiled-in model",
                e
            ),
        }
    }
    let mut learner = match Learner::<FEATURES>::new(&model, SETTINGS) {
        Ok(l) => Some(l),
        Err(e) => {
            defmt::error!("cannot learn with this model ({}): clustering only", e);
            None
        }
    };

    let mut work = [0.0f32; SHAPE.work_len()];
    let mut window = Window::new();
    let mut count: u32 = 0;
    loop {
        match sensor.accel_status() {
            Ok(s) if s.xyz_new_data() => {}
            Ok(_) => {
                // 50 Hz: a new sample every 20 ms; poll a few times per period.
                embedded_hal::delay::DelayNs::delay_ms(&mut timer, 5);
                continue;
            }
            Err(_) => {
                defmt::warn!("accelerometer status read failed; retrying");
                embedded_hal::delay::DelayNs::delay_ms(&mut timer, 20);
                continue;
            }
        }
        let Ok(acc) = sensor.acceleration() else {
            defmt::warn!("accelerometer read failed; retrying");
            continue;
        };
        let (x, y, z) = acc.xyz_mg();
        let sample = [x as f32 / 1000.0, y as f32 / 1000.0, z as f32 / 1000.0];
        let Some(f) = window.push(sample) else {
            continue;
        };
        count = count.wrapping_add(1);
        match learner.as_mut() {
            Some(l) => learn(l, &mut model, &f, &mut work, count),
            None => cluster(&model, &f, &mut work, count),
        }
        if let (Some(l), Some(s)) = (learner.as_mut(), store.as_mut()) {
            if l.save_due() {
                l.saved();
                match s.save(&model, l.windows()) {
                    Ok(saved) => defmt::info!(
                        "saved what was learned: checkpoint {=u32} (slot {=u8}), {=u32} windows",
                        saved.seq,
                        saved.slot,
                        l.windows()
                    ),
                    Err(e) => defmt::warn!(
                        "save failed ({}); next try in {=u32} windows",
                        e,
                        SAVE_EVERY
                    ),
                }
            }
        }
    }
}

/// One window: adapt the model to it and log its cluster.
fn learn<M: Adaptable>(
    learner: &mut Learner<FEATURES>,
    model: &mut M,
    f: &[f32; FEATURES],
    work: &mut [f32],
    count: u32,
) {
    match learner.step(model, f, work) {
        Ok(o) => {
            log_window(count, o.label, o.prob, o.novelty);
            if let Some(slot) = o.spawned {
                defmt::info!(
                    "window {=u32}: novelty persisted: new centre in slot {=usize}",
                    count,
                    slot
                );
            }
        }
        Err(e) => defmt::warn!("window {=u32}: not learned from: {}", count, e),
    }
}

/// One window, without learning (the model refused to learn at boot).
fn cluster<M: Adaptable>(model: &M, f: &[f32; FEATURES], work: &mut [f32], count: u32) {
    match model.segment(f, work) {
        Ok(seg) => {
            let p = seg.probs.get(seg.label).copied().unwrap_or(0.0);
            log_window(count, seg.label, p, seg.novelty());
        }
        Err(e) => defmt::warn!("window {=u32}: not clustered: {}", count, e),
    }
}

fn log_window(count: u32, label: usize, p: f32, novelty: f32) {
    defmt::info!(
        "window {=u32}: cluster {=usize} ({=str}) p = {}, novelty {}{=str}",
        count,
        label,
        CLUSTER_NAMES.get(label).copied().unwrap_or("?"),
        Fixed(p, 2),
        Fixed(novelty, 3),
        if novelty > NOVELTY_FLAG { " NOVEL" } else { "" }
    );
}
