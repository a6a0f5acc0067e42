//! What an engine keeps for the training under way, and the type that says whether it
//! keeps anything: an engine that trains holds a [`Learning`]; one that only answers
//! (`INFER`) holds `()`, and so spends no RAM on a trainer, a tracker or the memory of
//! online k-means.

use super::SEED;
use crate::infer::normalise::Tracker;
use crate::protocol::TrainSettings;
use crate::train::centres::{CentreCounts, Spawner};
use crate::train::trainer::OnlineTrainer;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The trainer of an engine with `D` inputs and a memory of `MEM` past samples, each
/// value stored as `E`, its buffers `B` from the store.
pub(super) type Trainer<const D: usize, const MEM: usize, B, E> =
    OnlineTrainer<f32, D, MEM, B, B, E>;

/// The training state of an engine that trains: at most one of a trainer and online
/// k-means at a time, with their settings, the normalisation tracker and the generator.
pub struct Learning<const D: usize, const MEM: usize, B, E> {
    pub(super) trainer: Option<Trainer<D, MEM, B, E>>,
    /// The settings of the training under way (saved with its checkpoints).
    pub(super) settings: Option<TrainSettings>,
    /// The stream's normalisation, while a `SegmenterAndNormalisation` training runs.
    pub(super) tracker: Option<Tracker<D>>,
    /// The centres' counts and what spawns new centres, while an online k-means
    /// training runs (instead of `trainer`).
    pub(super) kmeans: Option<(CentreCounts, Spawner)>,
    pub(super) rng: Xoshiro256PlusPlus,
}

/// The training state an engine holds: [`Learning`], or `()` for none.
pub trait Learns<const D: usize, const MEM: usize, B, E> {
    /// Whether this keeps a training state (an engine with `CAP_TRAIN` must).
    const KEEPS: bool;
    /// The state before any training.
    fn new() -> Self;
    /// The training state, if the engine keeps one.
    fn state(&mut self) -> Option<&mut Learning<D, MEM, B, E>>;
    /// The training state, if the engine keeps one.
    fn state_ref(&self) -> Option<&Learning<D, MEM, B, E>>;
    /// Ends the training under way (its buffers go back to the store).
    fn stop(&mut self) {
        if let Some(l) = self.state() {
            l.trainer = None;
            l.settings = None;
            l.tracker = None;
            l.kmeans = None;
        }
    }
}

impl<const D: usize, const MEM: usize, B, E> Learns<D, MEM, B, E> for Learning<D, MEM, B, E> {
    const KEEPS: bool = true;

    /// Not inlined: its value is then returned straight into the engine's field. Inlined
    /// into [`Engine::new`](super::Engine::new), the compiler may build it on the stack
    /// first and copy it (the size of the memory of samples, kept in the caller's frame
    /// for good).
    #[inline(never)]
    fn new() -> Self {
        Learning {
            trainer: None,
            settings: None,
            tracker: None,
            kmeans: None,
            rng: Xoshiro256PlusPlus::seed_from_u64(SEED),
        }
    }

    fn state(&mut self) -> Option<&mut Learning<D, MEM, B, E>> {
        Some(self)
    }

    fn state_ref(&self) -> Option<&Learning<D, MEM, B, E>> {
        Some(self)
    }
}

impl<const D: usize, const MEM: usize, B, E> Learns<D, MEM, B, E> for () {
    const KEEPS: bool = false;

    fn new() -> Self {}

    fn state(&mut self) -> Option<&mut Learning<D, MEM, B, E>> {
        None
    }

    fn state_ref(&self) -> Option<&Learning<D, MEM, B, E>> {
        None
    }
}
