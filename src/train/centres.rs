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

/// Why a centre update was refused (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CentreError {
    /// The segmenter, the direction or the label does not fit the shape.
    #[error("a segmenter, direction or label that does not fit the shape")]
    Length,
    /// The direction is not finite, or the moved centre would be (or be zero).
    #[error("a non-finite direction or centre")]
    NonFinite,
}

/// The largest novelty there is (`1 - cosine` of opposite directions): a
/// [`SpawnRule::threshold`] at or above it makes no sample novel, so no centre spawns.
pub const MAX_NOVELTY: f32 = 2.0;

/// Most clusters online k-means handles (its counts live in the engine, in RAM).
pub const MAX_ONLINE_CLUSTERS: usize = 32;

/// The per-centre counts of online k-means (see the [module](self)), for models of at
/// most [`MAX_ONLINE_CLUSTERS`] clusters.
#[derive(Clone, Debug, PartialEq)]
pub struct CentreCounts {
    counts: [f32; MAX_ONLINE_CLUSTERS],
    /// [`CentreCounts::updates`] when each centre last took a sample (or was spawned).
    last: [u32; MAX_ONLINE_CLUSTERS],
    memory: f32,
    updates: u32,
}

/// The counts, the samples each centre last took, the memory and the updates.
impl crate::store::record::Record for CentreCounts {
    crate::store::record::fields_record!(
        counts: [f32; MAX_ONLINE_CLUSTERS],
        last: [u32; MAX_ONLINE_CLUSTERS],
        memory: f32,
        updates: u32,
    );
}

impl CentreCounts {
    /// Counts for the centres of a trained model: each starts with a full `memory`
    /// (at least 1; a NaN memory becomes 1).
    pub const fn new(memory: f32) -> Self {
        let memory = if memory >= 1.0 { memory } else { 1.0 };
        CentreCounts {
            counts: [memory; MAX_ONLINE_CLUSTERS],
            last: [0; MAX_ONLINE_CLUSTERS],
            memory,
            updates: 0,
        }
    }

    /// The memory (the counts' bound).
    pub fn memory(&self) -> f32 {
        self.memory
    }

    /// Samples taken so far (saturating).
    pub fn updates(&self) -> u32 {
        self.updates
    }

    /// The count of centre `k` (0 past the last cluster).
    pub fn count(&self, k: usize) -> f32 {
        self.counts.get(k).copied().unwrap_or(0.0)
    }

    /// Sets the count of centre `k` (at most the memory; nothing past the last cluster)
    /// and counts it as fed now (a spawned centre does not starve at once).
    pub fn set_count(&mut self, k: usize, count: f32) {
        if let Some(c) = self.counts.get_mut(k) {
            *c = count.min(self.memory);
        }
        if let Some(l) = self.last.get_mut(k) {
            *l = self.updates;
        }
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
            || label >= MAX_ONLINE_CLUSTERS
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
        if let Some(l) = self.last.get_mut(label) {
            *l = self.updates;
        }
        Ok(())
    }

    /// Retires a centre that starves or merges two that coincide, by `rule`, after the
    /// update of centre `label` (see [`TidyRule`]); at most one change per call, and
    /// never the last centre in use. A retired slot gets the direction of a centre in
    /// use and [`UNUSED_LOG_WEIGHT`], as an unused slot has, and a count of 0. Cost: `K M`
    /// multiply-adds. On error nothing changes.
    pub fn tidy(
        &mut self,
        shape: &Shape,
        seg: &mut [f32],
        label: usize,
        rule: &TidyRule,
    ) -> Result<Option<Tidied>, CentreError> {
        let (m, k) = (shape.latent, shape.clusters);
        if seg.len() != shape.segmenter_len() || label >= k || k > MAX_ONLINE_CLUSTERS {
            return Err(CentreError::Length);
        }
        let used = (0..k).filter(|&j| in_use(shape, seg, j)).count();
        if used < 2 {
            return Ok(None);
        }
        // Merge: the centre just moved and the closest other centre in use.
        let centres = seg.get(..k * m).ok_or(CentreError::Length)?;
        let c = centres
            .get(label * m..(label + 1) * m)
            .ok_or(CentreError::Length)?;
        let mut closest: Option<(usize, f32)> = None;
        for (j, cj) in centres.chunks_exact(m.max(1)).enumerate() {
            if j == label || !in_use(shape, seg, j) {
                continue;
            }
            let cos: f32 = c.iter().zip(cj).map(|(a, b)| a * b).sum();
            if closest.is_none_or(|(_, best)| cos > best) {
                closest = Some((j, cos));
            }
        }
        if in_use(shape, seg, label) {
            if let Some((j, _)) = closest.filter(|&(_, cos)| cos >= rule.merge_above) {
                // The centre with the larger count stays (the lower slot on a tie).
                let (nl, nj) = (self.count(label), self.count(j));
                let (keep, drop) = if nj > nl || (nj == nl && j < label) {
                    (j, label)
                } else {
                    (label, j)
                };
                self.merge(shape, seg, keep, drop)?;
                return Ok(Some(Tidied::Merged {
                    from: drop,
                    into: keep,
                }));
            }
        }
        // Starve: the centre in use that went longest without a sample.
        let mut oldest: Option<(usize, u32)> = None;
        for j in 0..k {
            let age = self
                .updates
                .saturating_sub(self.last.get(j).copied().unwrap_or(0));
            if in_use(shape, seg, j) && oldest.is_none_or(|(_, a)| age > a) {
                oldest = Some((j, age));
            }
        }
        if let Some((j, _)) = oldest.filter(|&(_, age)| age > rule.starve_after) {
            let donor = (0..k)
                .find(|&i| i != j && in_use(shape, seg, i))
                .ok_or(CentreError::Length)?;
            self.retire(shape, seg, j, donor)?;
            return Ok(Some(Tidied::Retired { slot: j }));
        }
        Ok(None)
    }

    /// Merges centre `drop` into centre `keep`: `c_keep <- (n_keep c_keep + n_drop
    /// c_drop) / |...|`, `n_keep <- min(n_keep + n_drop, memory)`; `drop` retires.
    fn merge(
        &mut self,
        shape: &Shape,
        seg: &mut [f32],
        keep: usize,
        drop: usize,
    ) -> Result<(), CentreError> {
        let m = shape.latent;
        let (nk, nd) = (self.count(keep), self.count(drop));
        let (ck, cd) = pair_mut(seg, m, keep, drop)?;
        let sq: f32 = ck
            .iter()
            .zip(cd.iter())
            .map(|(&a, &b)| (nk * a + nd * b) * (nk * a + nd * b))
            .sum();
        let norm = libm::sqrtf(sq);
        if !(norm.is_finite() && norm > 0.0) {
            return Err(CentreError::NonFinite);
        }
        for (a, &b) in ck.iter_mut().zip(cd.iter()) {
            *a = (nk * *a + nd * b) / norm;
        }
        if let Some(c) = self.counts.get_mut(keep) {
            *c = (nk + nd).min(self.memory);
        }
        self.retire(shape, seg, drop, keep)
    }

    /// Slot `slot` becomes unused: the direction of centre `donor`, [`UNUSED_LOG_WEIGHT`],
    /// a count of 0.
    fn retire(
        &mut self,
        shape: &Shape,
        seg: &mut [f32],
        slot: usize,
        donor: usize,
    ) -> Result<(), CentreError> {
        let (m, k) = (shape.latent, shape.clusters);
        if slot == donor || slot >= k || donor >= k {
            return Err(CentreError::Length);
        }
        let (dst, src) = pair_mut(seg, m, slot, donor)?;
        for (d, &s) in dst.iter_mut().zip(src.iter()) {
            *d = s;
        }
        let w = seg.get_mut(k * m + 1 + slot).ok_or(CentreError::Length)?;
        *w = UNUSED_LOG_WEIGHT;
        if let Some(c) = self.counts.get_mut(slot) {
            *c = 0.0;
        }
        Ok(())
    }
}

/// Centres `a` and `b` (`a != b`) of the segmenter `seg`, `m` values each, both mutable.
fn pair_mut(
    seg: &mut [f32],
    m: usize,
    a: usize,
    b: usize,
) -> Result<(&mut [f32], &mut [f32]), CentreError> {
    let (lo, hi) = (a.min(b), a.max(b));
    if lo == hi {
        return Err(CentreError::Length);
    }
    let (x, y) = seg
        .split_at_mut_checked(hi * m)
        .ok_or(CentreError::Length)?;
    let low = x.get_mut(lo * m..(lo + 1) * m).ok_or(CentreError::Length)?;
    let high = y.get_mut(..m).ok_or(CentreError::Length)?;
    Ok(if a == lo { (low, high) } else { (high, low) })
}

/// When [`CentreCounts::tidy`] retires or merges centres.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TidyRule {
    /// Cosine at or above which the centre just moved and its closest other centre in
    /// use coincide: they merge (2 or more: never).
    pub merge_above: f32,
    /// Samples without one labelled with it after which a centre in use starves and
    /// retires (`u32::MAX`: never).
    pub starve_after: u32,
}

/// What [`CentreCounts::tidy`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Tidied {
    /// Centre `from` merged into centre `into`; slot `from` is unused now.
    Merged {
        /// The slot that retired.
        from: usize,
        /// The centre that took its count and moved to the weighted mean direction.
        into: usize,
    },
    /// Centre `slot` starved; its slot is unused now.
    Retired {
        /// The slot that retired.
        slot: usize,
    },
}

/// The log-weight of a centre slot that is not in use: its probability is zero
/// (`exp(-1e4)` underflows), so no sample is labelled with it. An unused slot's centre
/// should be a copy of a used one, so that the largest cosine (the novelty) is that of
/// the used centres.
pub const UNUSED_LOG_WEIGHT: f32 = -1.0e4;

/// Most novel directions a [`Spawner`] keeps.
pub const NOVEL_CAP: usize = 16;

/// Largest latent size a [`Spawner`] handles.
pub const MAX_SPAWN_LATENT: usize = 16;

/// When novelty persists: at least `count` of the last `window` samples had a novelty
/// (`1 - cosine` to the nearest centre) above `threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SpawnRule {
    /// Novelty above which a sample is novel (e.g. a high percentile of the training
    /// set's novelty).
    pub threshold: f32,
    /// Samples looked back on, at most 128.
    pub window: u8,
    /// Novel samples among them that spawn a centre, at least 1.
    pub count: u8,
}

/// Whether a slot of segmenter `seg` is in use (its log-weight above half of
/// [`UNUSED_LOG_WEIGHT`]).
pub fn in_use(shape: &Shape, seg: &[f32], k: usize) -> bool {
    let (m, kk) = (shape.latent, shape.clusters);
    k < kk
        && seg
            .get(kk * m + 1 + k)
            .is_some_and(|&w| w > 0.5 * UNUSED_LOG_WEIGHT)
}

/// Spawns a centre from novelty that persists: it keeps the novelty flags of the last
/// [`SpawnRule::window`] samples and the directions of the last [`NOVEL_CAP`] novel
/// ones; when the rule fires and a slot is unused, spherical 2-means over the kept
/// directions gives the new centre (the mean direction of the larger group), which
/// takes the unused slot with the mean log-weight of the used ones and a count of its
/// group's size, and the memory of novelty starts again.
#[derive(Clone, Debug, PartialEq)]
pub struct Spawner {
    rule: SpawnRule,
    flags: u128,
    seen: u8,
    novel: [[f32; MAX_SPAWN_LATENT]; NOVEL_CAP],
    len: usize,
    next: usize,
    spawned: u32,
}

/// The memory of novelty (flags, novel directions, counters); not the rule, which comes
/// from the settings.
impl crate::store::record::Record for Spawner {
    crate::store::record::fields_record!(
        flags: u128,
        seen: u8,
        novel: [[f32; MAX_SPAWN_LATENT]; NOVEL_CAP],
        len: usize,
        next: usize,
        spawned: u32,
    );
}

impl Spawner {
    /// A spawner with `rule` (a window above 128 is 128, a count of 0 is 1).
    pub const fn new(rule: SpawnRule) -> Self {
        let window = if rule.window > 128 { 128 } else { rule.window };
        let count = if rule.count == 0 { 1 } else { rule.count };
        Spawner {
            rule: SpawnRule {
                threshold: rule.threshold,
                window,
                count,
            },
            flags: 0,
            seen: 0,
            novel: [[0.0; MAX_SPAWN_LATENT]; NOVEL_CAP],
            len: 0,
            next: 0,
            spawned: 0,
        }
    }

    /// Centres spawned so far.
    pub fn spawned(&self) -> u32 {
        self.spawned
    }

    /// True if `novelty` is above the rule's threshold. Never with a threshold at or
    /// above [`MAX_NOVELTY`] (spawning off), even for a novelty that rounding put a few
    /// ulp above 2 (a direction opposite every centre).
    pub fn is_novel(&self, novelty: f32) -> bool {
        novelty > self.rule.threshold && self.rule.threshold < MAX_NOVELTY
    }

    /// Takes one sample's direction `mu` and novelty; true when the rule fires.
    pub fn observe(&mut self, mu: &[f32], novelty: f32) -> bool {
        let novel = self.is_novel(novelty) && mu.len() <= MAX_SPAWN_LATENT;
        let w = u32::from(self.rule.window);
        let mask = if w >= 128 {
            u128::MAX
        } else {
            (1u128 << w) - 1
        };
        self.flags = ((self.flags << 1) | u128::from(novel)) & mask;
        self.seen = self.seen.saturating_add(1).min(self.rule.window);
        if novel {
            if let Some(row) = self.novel.get_mut(self.next) {
                row.fill(0.0);
                for (r, &v) in row.iter_mut().zip(mu) {
                    *r = v;
                }
            }
            self.next = (self.next + 1) % NOVEL_CAP;
            self.len = (self.len + 1).min(NOVEL_CAP);
        }
        self.flags.count_ones() >= u32::from(self.rule.count)
    }

    /// Spawns a centre into the first unused slot of `seg` (see the type's docs), with
    /// its count in `counts`. `Ok(None)` when no slot is unused or fewer than two
    /// directions are kept (the memory of novelty is kept then). On error nothing
    /// changes.
    ///
    /// Not inlined: its 2-means works on the stack, which its caller then does not keep
    /// while it reports the spawn.
    #[inline(never)]
    pub fn spawn<R: rand_core::Rng>(
        &mut self,
        shape: &Shape,
        seg: &mut [f32],
        counts: &mut CentreCounts,
        rng: &mut R,
    ) -> Result<Option<usize>, CentreError> {
        let (m, k) = (shape.latent, shape.clusters);
        if seg.len() != shape.segmenter_len()
            || m == 0
            || m > MAX_SPAWN_LATENT
            || k > MAX_ONLINE_CLUSTERS
        {
            return Err(CentreError::Length);
        }
        let Some(slot) = (0..k).find(|&j| !in_use(shape, seg, j)) else {
            return Ok(None);
        };
        if self.len < 2 {
            return Ok(None);
        }
        let n = self.len;
        let kept = self.novel.get(..n).ok_or(CentreError::Length)?;
        let mut points = [0.0f32; NOVEL_CAP * MAX_SPAWN_LATENT];
        for (i, row) in kept.iter().enumerate() {
            let dst = points
                .get_mut(i * m..(i + 1) * m)
                .ok_or(CentreError::Length)?;
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = v;
            }
        }
        let points = points.get(..n * m).ok_or(CentreError::Length)?;
        let mut centres = [0.0f32; 2 * MAX_SPAWN_LATENT];
        let mut scratch = [0.0f32; crate::train::kmeans::scratch_len(2, MAX_SPAWN_LATENT)];
        let mut labels = [0u8; NOVEL_CAP];
        let labels = labels.get_mut(..n).ok_or(CentreError::Length)?;
        let two = centres.get_mut(..2 * m).ok_or(CentreError::Length)?;
        crate::train::kmeans::spherical_kmeans(points, m, 2, 20, rng, two, &mut scratch, labels)
            .map_err(|_| CentreError::NonFinite)?;
        let ones = labels.iter().filter(|&&l| l == 1).count();
        let (group, size) = if 2 * ones > n {
            (1, ones)
        } else {
            (0, n - ones)
        };
        let centre = two
            .get(group * m..(group + 1) * m)
            .ok_or(CentreError::Length)?;
        if !centre.iter().all(|v| v.is_finite()) {
            return Err(CentreError::NonFinite);
        }
        // The mean log-weight of the slots in use.
        let (mut sum, mut used) = (0.0f32, 0u32);
        for j in 0..k {
            if in_use(shape, seg, j) {
                sum += seg.get(k * m + 1 + j).copied().unwrap_or(0.0);
                used += 1;
            }
        }
        let weight = if used > 0 { sum / used as f32 } else { 0.0 };
        let target = seg
            .get_mut(slot * m..(slot + 1) * m)
            .ok_or(CentreError::Length)?;
        for (t, &v) in target.iter_mut().zip(centre) {
            *t = v;
        }
        if let Some(w) = seg.get_mut(k * m + 1 + slot) {
            *w = weight;
        }
        counts.set_count(slot, size as f32);
        self.flags = 0;
        self.seen = 0;
        self.len = 0;
        self.next = 0;
        self.spawned = self.spawned.saturating_add(1);
        Ok(Some(slot))
    }
}
