//! Online k-means of a trained segmenter's centres: each sample moves the centre it is
//! labelled with towards its direction, by a step that shrinks with the centre's count.
//!
//! The rule is MacQueen's online k-means on the sphere with a bounded memory: for a
//! sample with direction `mu` and label `k`, the count becomes
//! `n_k = min(n_k + 1, memory)` and the centre
//! `c_k <- (c_k + (mu - c_k) / n_k) / |c_k + (mu - c_k) / n_k|`. A centre of a trained
//! model starts with a full memory (`n_k = memory`), so it moves by `1 / memory` of the
//! distance per sample and follows a cluster that moves, while no sample can throw it
//! far; a centre that starts empty (`n_k = 0`) jumps onto its first sample and then
//! averages. Only the centres move: `ln kappa_s` and the mixing weights stay the
//! model's, so the labels of a stream that does not change stay where they were. No
//! gradient, no optimiser state, no sample buffer: `K` counts.
//!
//! Cost per sample: one [`Model::segment`](crate::infer::model::Model::segment) (done by
//! the caller for its answer anyway) and `3 M` multiply-adds and one square root.

use crate::shape::Shape;
use crate::train::kmeans::MAX_CLUSTERS;

/// Why a centre update was refused (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CentreError {
    /// The segmenter, the direction or the label does not fit the shape.
    Length,
    /// The direction is not finite, or the moved centre would be (or be zero).
    NonFinite,
}

impl core::fmt::Display for CentreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CentreError::Length => "a segmenter, direction or label that does not fit the shape",
            CentreError::NonFinite => "a non-finite direction or centre",
        })
    }
}

impl core::error::Error for CentreError {}

/// The per-centre counts of online k-means (see the [module](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct CentreCounts {
    counts: [f32; MAX_CLUSTERS],
    memory: f32,
    updates: u32,
}

impl CentreCounts {
    /// Counts for the centres of a trained model: each starts with a full `memory`
    /// (at least 1; a NaN memory becomes 1).
    pub const fn new(memory: f32) -> Self {
        let memory = if memory >= 1.0 { memory } else { 1.0 };
        CentreCounts {
            counts: [memory; MAX_CLUSTERS],
            memory,
            updates: 0,
        }
    }

    /// Samples taken so far (saturating).
    pub fn updates(&self) -> u32 {
        self.updates
    }

    /// The count of centre `k` (0 past the last cluster).
    pub fn count(&self, k: usize) -> f32 {
        self.counts.get(k).copied().unwrap_or(0.0)
    }

    /// Moves centre `label` of the segmenter parameters `seg` (laid out as
    /// [`Shape::segmenter_len`]: `K M` centre values first) towards the unit direction
    /// `mu` (`M` values), by the rule of the [module](self). On error nothing changes.
    pub fn update(
        &mut self,
        shape: &Shape,
        seg: &mut [f32],
        mu: &[f32],
        label: usize,
    ) -> Result<(), CentreError> {
        let m = shape.latent;
        if seg.len() != shape.segmenter_len()
            || mu.len() != m
            || label >= shape.clusters
            || label >= MAX_CLUSTERS
        {
            return Err(CentreError::Length);
        }
        if !mu.iter().all(|v| v.is_finite()) {
            return Err(CentreError::NonFinite);
        }
        let c = seg
            .get_mut(label * m..(label + 1) * m)
            .ok_or(CentreError::Length)?;
        let n = self.counts.get_mut(label).ok_or(CentreError::Length)?;
        let next = (*n + 1.0).min(self.memory);
        let step = 1.0 / next;
        let mut sq = 0.0f32;
        for (&ci, &x) in c.iter().zip(mu) {
            let v = ci + (x - ci) * step;
            sq += v * v;
        }
        let norm = libm::sqrtf(sq);
        if !(norm.is_finite() && norm > 0.0) {
            return Err(CentreError::NonFinite);
        }
        for (ci, &x) in c.iter_mut().zip(mu) {
            *ci = (*ci + (x - *ci) * step) / norm;
        }
        *n = next;
        self.updates = self.updates.saturating_add(1);
        Ok(())
    }
}
