//! On-board learning for the micro:bit v2 example (`boards/microbit-v2`): a deployed
//! model adapts its segmenter and its input normalisation to the stream it sees, and
//! keeps what it learned across resets in NOR flash. `no_std`, no heap, fixed memory,
//! no panic path; the logic is here (and tested on the host) so that the board's
//! `main.rs` holds only its I/O.
//!
//! | module | job |
//! |---|---|
//! | [`model`] | [`Adaptable`]: the `f32` [`hvae::Model`] and the int8 [`Int8`] seen as what adapts (normalisation, segmenter) |
//! | [`learner`] | [`Learner`]: one window in, the normalisation tracked, the centres moved, a save due every N windows |
//! | [`persist`] | [`Persist`]: the adapted values in the core's A/B checkpoints ([`hvae::store::checkpoint`]), restored at boot |
//!
//! # The rule
//!
//! For each window `x` (its features, raw):
//! 1. the input normalisation follows the stream: `x` updates a
//!    [`Tracker`](hvae::infer::normalise::Tracker) (exponential forgetting by
//!    [`Settings::decay`] per window) started from the model's normalisation, whose
//!    normalisation replaces the model's;
//! 2. the model segments `x`; the novelty is `1 - cosine` to the nearest centre;
//! 3. a window whose novelty is above [`SpawnRule::threshold`](hvae::train::centres::SpawnRule)
//!    is *novel*: it moves no centre (an unknown activity cannot drag a known one
//!    towards itself) and goes to the [`Spawner`](hvae::train::centres::Spawner), which
//!    gives an unused centre slot (if the model has one) the mean direction of
//!    persisting novelty;
//! 4. any other window moves the centre of its label by online k-means
//!    ([`CentreCounts`](hvae::train::centres::CentreCounts): a step of `1 / memory` of the
//!    way to its direction once the centre's count is full, as every trained centre's is).
//!
//! No centre retires: the board's clusters are activities that may be rare (shaking)
//! and must not be forgotten for being absent for a while. Every [`Settings::save_every`]
//! windows the normalisation and the segmenter are saved ([`Persist::save`]); at boot the
//! newest valid checkpoint of the same model (shape and weights, through
//! [`Layout::adapted`](hvae::store::checkpoint::Layout::adapted)'s identity) is put back.
//! The centres' counts and the tracker's statistics are not saved: after a reset they
//! start again from the restored values as from a trained model's (full counts; the
//! tracker as if it had seen a full window of rows of the restored normalisation).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod learner;
pub mod model;
pub mod persist;

pub use learner::{Learner, Outcome, Settings};
pub use model::{Adaptable, Int8};
pub use persist::{Persist, Restored};

/// Why a window or a save was not taken (nothing is lost: the board logs it and goes on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AdaptError {
    /// The model cannot segment the window (e.g. a zero direction).
    Infer(hvae::InferError),
    /// A window, a normalisation or a state of the wrong length, or a model of more
    /// clusters or a larger latent than online k-means handles.
    Length,
    /// A non-finite window or normalisation (nothing changed).
    NonFinite,
    /// The int8 model's values were refused (e.g. a normalisation that made a scale
    /// non-positive).
    Quant(hvae::QuantError),
    /// Online k-means refused the update or the spawn (nothing changed).
    Centres(hvae::train::centres::CentreError),
    /// The checkpoint store failed.
    Checkpoint(hvae::CheckpointError),
}

impl core::fmt::Display for AdaptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AdaptError::Infer(e) => write!(f, "inference: {e}"),
            AdaptError::Length => {
                f.write_str("a window, normalisation or state of the wrong length")
            }
            AdaptError::NonFinite => f.write_str("a non-finite window or normalisation"),
            AdaptError::Quant(e) => write!(f, "int8 model: {e}"),
            AdaptError::Centres(e) => write!(f, "centres: {e}"),
            AdaptError::Checkpoint(e) => write!(f, "checkpoint: {e}"),
        }
    }
}

impl core::error::Error for AdaptError {}
