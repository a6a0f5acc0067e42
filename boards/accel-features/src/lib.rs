//! Accelerometer windows to model inputs, `no_std`: the feature code of the micro:bit v2
//! example (`boards/microbit-v2`), a crate of its own so that the host tests
//! (`host-tools/tests/board_features.rs`) check the very code the board runs.
//!
//! A window is [`WINDOW`] consecutive samples `(x, y, z)` in g. Its [`FEATURES`] features
//! are, in this order (the column order of the training CSV written by
//! `boards/microbit-v2/model/make_model.py`, which computes exactly the same thing in
//! NumPy):
//!
//! | # | feature |
//! |---|---|
//! | 0-2 | mean of x, y, z |
//! | 3-5 | population standard deviation of x, y, z |
//! | 6-9 | magnitude `|a|`: mean, standard deviation, minimum, maximum |
//! | 10 | mean absolute change of `|a|` between consecutive samples (jerk) |
//! | 11 | fraction of the `WINDOW - 1` steps where `|a|` crosses its window mean |
//!
//! The means capture orientation (resting flat vs held upright), the spreads and the
//! jerk capture motion energy (walking vs shaking), the crossing rate its frequency.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Samples per window (0.64 s at 50 Hz).
pub const WINDOW: usize = 32;

/// Features per window: the model's input size.
pub const FEATURES: usize = 12;

/// Collects samples; every [`WINDOW`] samples it yields one feature vector.
pub struct Window {
    samples: [[f32; 3]; WINDOW],
    len: usize,
}

impl Window {
    /// An empty window.
    pub const fn new() -> Self {
        Window {
            samples: [[0.0; 3]; WINDOW],
            len: 0,
        }
    }

    /// Adds one sample (in g). When this fills the window, returns its features and
    /// starts the next window empty (windows do not overlap).
    pub fn push(&mut self, a: [f32; 3]) -> Option<[f32; FEATURES]> {
        // `len < WINDOW` between calls; `get_mut` keeps a panic path out of the image.
        if let Some(slot) = self.samples.get_mut(self.len) {
            *slot = a;
        }
        self.len += 1;
        if self.len < WINDOW {
            return None;
        }
        self.len = 0;
        Some(features(&self.samples))
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

/// The features of one full window (see the module documentation).
pub fn features(w: &[[f32; 3]; WINDOW]) -> [f32; FEATURES] {
    let n = WINDOW as f32;
    let mut out = [0.0f32; FEATURES];
    let mut mag = [0.0f32; WINDOW];
    for (s, m) in w.iter().zip(mag.iter_mut()) {
        *m = libm::sqrtf(s[0] * s[0] + s[1] * s[1] + s[2] * s[2]);
    }
    for axis in 0..3 {
        let mean = w.iter().map(|s| s[axis]).sum::<f32>() / n;
        let var = w
            .iter()
            .map(|s| (s[axis] - mean) * (s[axis] - mean))
            .sum::<f32>()
            / n;
        out[axis] = mean;
        out[3 + axis] = libm::sqrtf(var);
    }
    let mm = mag.iter().sum::<f32>() / n;
    let mvar = mag.iter().map(|m| (m - mm) * (m - mm)).sum::<f32>() / n;
    out[6] = mm;
    out[7] = libm::sqrtf(mvar);
    out[8] = mag.iter().copied().fold(f32::INFINITY, f32::min);
    out[9] = mag.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let steps = (WINDOW - 1) as f32;
    out[10] = mag
        .windows(2)
        .map(|p| libm::fabsf(p[1] - p[0]))
        .sum::<f32>()
        / steps;
    let crossings = mag
        .windows(2)
        .filter(|p| (p[1] - mm) * (p[0] - mm) < 0.0)
        .count();
    out[11] = crossings as f32 / steps;
    out
}
