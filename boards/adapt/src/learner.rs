//! One window at a time: the normalisation tracked, the window segmented, the centre of
//! its label moved (unless it is novel), a spawn when novelty persists, a save due every
//! [`Settings::save_every`] windows (the rule: the [crate] docs).

use crate::model::{copy, Adaptable};
use crate::AdaptError;
use hvae::infer::normalise::Tracker;
use hvae::train::centres::{
    CentreCounts, SpawnRule, Spawner, MAX_ONLINE_CLUSTERS, MAX_SPAWN_LATENT,
};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// How the board learns (its constants; see the [crate] docs for the rule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// The centres' counts' bound: once full, a window moves its centre by
    /// `1 / memory` of the way to its direction.
    pub memory: f32,
    /// Forgetting factor of the normalisation's statistics per window: they weigh about
    /// the last `1 / (1 - decay)` windows.
    pub decay: f32,
    /// When a window is novel (its novelty above `threshold`: it moves no centre) and
    /// when novelty persists enough to spawn a centre into an unused slot.
    pub spawn: SpawnRule,
    /// Windows between two saves of what was learned ([`Learner::save_due`]).
    pub save_every: u32,
    /// Seed of the spawner's 2-means.
    pub seed: u64,
}

/// What one window gave.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Outcome {
    /// The window's cluster (segmented after the normalisation took the window, before
    /// the centres moved).
    pub label: usize,
    /// Its probability.
    pub prob: f32,
    /// `1 - cosine` to the nearest centre.
    pub novelty: f32,
    /// Above the spawn rule's threshold: no centre moved.
    pub novel: bool,
    /// The slot a centre was spawned into, if novelty persisted and a slot was free.
    pub spawned: Option<usize>,
}

/// The learning state beside the model: the normalisation's tracker, the centres'
/// counts, the spawner and the window counters. Fixed size; about `3 D + 2
/// MAX_ONLINE_CLUSTERS + NOVEL_CAP MAX_SPAWN_LATENT` words.
#[derive(Clone, Debug)]
pub struct Learner<const D: usize> {
    tracker: Tracker<D>,
    counts: CentreCounts,
    spawner: Spawner,
    rng: Xoshiro256PlusPlus,
    settings: Settings,
    windows: u32,
    since_save: u32,
}

impl<const D: usize> Learner<D> {
    /// A learner for `model` as it is now (compiled-in or restored): the tracker starts
    /// from its normalisation, every centre with a full count. `Length` for a model not
    /// of `D` inputs or beyond online k-means' limits, `NonFinite` for a normalisation
    /// the tracker cannot start from.
    pub fn new<M: Adaptable>(model: &M, settings: Settings) -> Result<Self, AdaptError> {
        let s = model.shape();
        if s.input != D || s.clusters > MAX_ONLINE_CLUSTERS || s.latent > MAX_SPAWN_LATENT {
            return Err(AdaptError::Length);
        }
        let (offset, scale) = model.normalisation();
        let tracker = Tracker::from_normalisation(offset, scale, settings.decay)
            .map_err(|_| AdaptError::NonFinite)?;
        Ok(Learner {
            tracker,
            counts: CentreCounts::new(settings.memory),
            spawner: Spawner::new(settings.spawn),
            rng: Xoshiro256PlusPlus::seed_from_u64(settings.seed),
            settings,
            windows: 0,
            since_save: 0,
        })
    }

    /// Takes one window `x` (`D` raw features) and adapts `model` to it (see the
    /// [crate] docs); `work` is a workspace of [`hvae::Shape::work_len`]. A non-finite
    /// window changes nothing (`NonFinite`); an error after the normalisation changed
    /// leaves that change (a valid normalisation) and moves no centre.
    pub fn step<M: Adaptable>(
        &mut self,
        model: &mut M,
        x: &[f32],
        work: &mut [f32],
    ) -> Result<Outcome, AdaptError> {
        if x.len() != D {
            return Err(AdaptError::Length);
        }
        self.tracker.push(x).map_err(|_| AdaptError::NonFinite)?;
        let (mut offset, mut scale) = ([0.0f32; D], [0.0f32; D]);
        self.tracker
            .normalisation(&mut offset, &mut scale)
            .map_err(|_| AdaptError::NonFinite)?;
        model.set_normalisation(&offset, &scale)?;
        self.windows = self.windows.saturating_add(1);
        self.since_save = self.since_save.saturating_add(1);
        let shape = *model.shape();
        let m = shape.latent;
        // The answer, copied out of the workspace before the centres move.
        let mut mu = [0.0f32; MAX_SPAWN_LATENT];
        let (label, prob, novelty) = {
            let seg = model.segment(x, work)?;
            copy(mu.get_mut(..m).ok_or(AdaptError::Length)?, seg.mu);
            let prob = seg.probs.get(seg.label).copied().unwrap_or(0.0);
            (seg.label, prob, seg.novelty())
        };
        let mu = mu.get(..m).ok_or(AdaptError::Length)?;
        let fire = self.spawner.observe(mu, novelty);
        let novel = self.spawner.is_novel(novelty);
        let seg = model.segmenter_mut();
        if !novel {
            self.counts
                .update(&shape, seg, mu, label)
                .map_err(AdaptError::Centres)?;
        }
        let spawned = if fire {
            self.spawner
                .spawn(&shape, seg, &mut self.counts, &mut self.rng)
                .map_err(AdaptError::Centres)?
        } else {
            None
        };
        Ok(Outcome {
            label,
            prob,
            novelty,
            novel,
            spawned,
        })
    }

    /// Windows taken since the learner started (saturating).
    pub fn windows(&self) -> u32 {
        self.windows
    }

    /// True when [`Settings::save_every`] windows were taken since the last
    /// [`Learner::saved`] (or the start).
    pub fn save_due(&self) -> bool {
        self.since_save >= self.settings.save_every.max(1)
    }

    /// A save was attempted: the next is due [`Settings::save_every`] windows from now,
    /// whether this one succeeded or not (a flash that keeps failing is not hammered).
    pub fn saved(&mut self) {
        self.since_save = 0;
    }

    /// The centres' counts (online k-means' state).
    pub fn counts(&self) -> &CentreCounts {
        &self.counts
    }
}
