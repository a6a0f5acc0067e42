//! hvae on a BBC micro:bit v2: read the LSM303AGR accelerometer over the internal I2C bus
//! (through the `lsm303agr` embedded-hal driver), cut the stream into windows, turn each
//! window into features ([`hvae_accel_features`]) and let a compiled-in hvae model ([`model`],
//! exported by `hvae export --format rust`) say which cluster it belongs to and how novel
//! it is. The log is defmt over RTT (`probe-rs run --chip nRF52833_xxAA <elf>` decodes and
//! shows it):
//!
//! ```text
//! INFO  window 17: cluster 3 (walking) p = 0.98, novelty 0.041
//! INFO  window 18: cluster 0 (shaking) p = 0.91, novelty 0.312 NOVEL
//! ```
//!
//! The model (12 features -> 16 -> S^2, K = 4) was trained on synthetic windows of four
//! activities by `model/make_model.py`; the names below are the activities its clusters
//! matched there. Sensor errors are logged and retried; nothing
//! the sensor returns can make the program panic.

#![no_std]
#![no_main]

#[allow(clippy::all)]
#[rustfmt::skip]
mod model;

use cortex_m_rt::entry;
use hvae::Model;
use hvae_accel_features::{Window, FEATURES};
use lsm303agr::{AccelMode, AccelOutputDataRate, Lsm303agr};
use microbit::hal::twim::{self, Twim};
use microbit::hal::Timer;
use microbit::Board;
// The global logger (defmt over RTT) and the panic handler (message through defmt).
use defmt_rtt as _;
use panic_probe as _;

// The exported model must take this crate's features.
const _: () = assert!(model::SHAPE.input == FEATURES);

/// Name of each cluster: the synthetic activity it gathered in `model/make_model.py`'s
/// data (found with `hvae_ref.py segment` on one window of each activity).
const CLUSTER_NAMES: [&str; model::SHAPE.clusters] =
    ["shaking", "held upright", "resting flat", "walking"];

/// Novelty (`1 - cosine` to the nearest centre) above which a window is flagged: several
/// times the training windows' mean (docs/device.md).
const NOVELTY_FLAG: f32 = 0.25;

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

    // Inference only: the first INFERENCE_PARAM_LEN parameters (no decoder). The blob's
    // CRC identifies the weights in the log.
    let model = match Model::new(model::SHAPE, &model::PARAMS[..model::INFERENCE_PARAM_LEN]) {
        Ok(m) => m,
        Err(_) => halt("the compiled-in model is invalid"),
    };
    defmt::info!(
        "hvae on micro:bit v2: model CRC {=u32:#010x}, {=usize} features -> S^{=usize}, K = {=usize}",
        model::BLOB_CRC,
        FEATURES,
        model::SHAPE.latent - 1,
        model::SHAPE.clusters
    );
    let mut work = [0.0f32; model::SHAPE.work_len()];
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
        match model.segment(&f, &mut work) {
            Ok(seg) => {
                let novelty = seg.novelty();
                defmt::info!(
                    "window {=u32}: cluster {=usize} ({=str}) p = {}, novelty {}{=str}",
                    count,
                    seg.label,
                    CLUSTER_NAMES.get(seg.label).copied().unwrap_or("?"),
                    Fixed(seg.probs.get(seg.label).copied().unwrap_or(0.0), 2),
                    Fixed(novelty, 3),
                    if novelty > NOVELTY_FLAG { " NOVEL" } else { "" }
                );
            }
            Err(e) => defmt::warn!("window {=u32}: not clustered: {}", count, e),
        }
    }
}
