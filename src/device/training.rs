//! The engine's training: `TrainBatch` with new settings starts a trainer (or online
//! k-means of the centres), then each request's samples are buffered and its steps
//! taken; the schedule and the configuration the core's trainer gets.

use super::engine::{emit_centre, net, net_mut, saturate_u8, writable, Small};
use super::learning::Trainer;
use super::persist::resume_prefix;
use super::{
    Params, CAP, CHECKPOINT_EVERY, MAX_BATCH, NORM_DECAY, QUANT_SD, RESUME_PREFIX, SCRATCH_CLIP,
    SCRATCH_GAMMA, SCRATCH_INIT_SAMPLES, SCRATCH_NEIGHBOURS, SCRATCH_POLICY, SCRATCH_RHO_TENTHS,
    SCRATCH_WARMUP_STEPS, SEED, TIDY, WARMUP_STEPS,
};
use crate::infer::model::Model;
use crate::infer::normalise::Tracker;
use crate::protocol::{
    CentreChange, ErrorCode, Response, TrainOptimiser, TrainScope, TrainSettings,
};
use crate::shape::Scope;
use crate::store::checkpoint::Restore;
use crate::train::centres::{
    in_use, CentreCounts, SpawnRule, Spawner, Tidied, MAX_ONLINE_CLUSTERS,
};
use crate::train::optim::Optimiser;
use crate::train::samples::Quant;
use crate::train::trainer::{Consistency, TrainConfig, TrainError};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

engine_impl! {
    /// Starts a training with new settings: a trainer (or the centres' counts of online
    /// k-means) and, for `SegmenterAndNormalisation`, a normalisation tracker.
    ///
    /// Not inlined: the new state is built on its stack (the spawner's memory, the
    /// tracker, the trainer), which a training step then does not keep.
    #[inline(never)]
    pub(super) fn start(&mut self, s: &TrainSettings) -> Result<(), ErrorCode> {
        self.learn.stop();
        self.staging = None;
        self.loader.reset();
        let l = self.learn.state().ok_or(ErrorCode::Unsupported)?;
        if let TrainOptimiser::OnlineKMeans {
            memory,
            spawn_above,
            spawn_window,
            spawn_count,
        } = s.optimiser
        {
            if !matches!(
                s.scope,
                TrainScope::SegmenterOnly | TrainScope::SegmenterAndNormalisation
            ) {
                return Err(ErrorCode::Train);
            }
            if self.model.shape().clusters > MAX_ONLINE_CLUSTERS {
                return Err(ErrorCode::Train);
            }
            let rule = SpawnRule {
                threshold: spawn_above,
                window: spawn_window,
                count: spawn_count,
            };
            l.kmeans = Some((CentreCounts::new(f32::from(memory)), Spawner::new(rule)));
            l.settings = Some(*s);
        } else {
            if !net(&self.model)?.has_decoder() {
                return Err(ErrorCode::Train);
            }
            let mut cfg = config_with_memory(s, MEM).ok_or(ErrorCode::Train)?;
            cfg.quant = quant_of::<D, _>(net(&self.model)?).ok_or(ErrorCode::Train)?;
            let shape = *self.model.shape();
            let (scratch, optim) = self
                .store
                .take(
                    cfg.scratch_len(&shape, MEM),
                    TrainConfig::<f32>::optim_len(&shape, cfg.scope, cfg.optim.optimiser.kind()),
                )
                .ok_or(ErrorCode::Train)?;
            let t = Trainer::<D, MEM, S::Buf, E>::new(&shape, cfg, scratch, optim)
                .map_err(|_| ErrorCode::Train)?;
            l.trainer = Some(t);
            l.settings = Some(*s);
        }
        if s.scope == TrainScope::SegmenterAndNormalisation {
            let (offset, scale) = normalisation_mut::<D>(writable(&mut self.model)?)?;
            let tracker = Tracker::from_normalisation(offset, scale, NORM_DECAY)
                .map_err(|_| ErrorCode::Train)?;
            l.tracker = Some(tracker);
        }
        l.rng = Xoshiro256PlusPlus::seed_from_u64(SEED);
        Ok(())
    }

    /// Online k-means: the tracker (if any) takes the samples and sets the normalisation,
    /// then each sample, segmented by the model, moves the centre of its label (a novel
    /// one moves none and goes to the spawner, which may give an unused slot a centre).
    /// The answer's `buffered` counts the centre slots in use (a spawn shows as one
    /// more), `steps` the samples taken, `loss` the request's mean novelty (`1 - cosine`
    /// to the nearest centre, before the update).
    #[inline(never)]
    fn update_centres(
        &mut self,
        samples: &[f32],
        emit: &mut dyn FnMut(&Response),
    ) -> Result<Small, ErrorCode> {
        let lr = self.learn.state().ok_or(ErrorCode::Internal)?;
        if let Some(tracker) = lr.tracker.as_mut() {
            for x in samples.chunks_exact(D) {
                tracker.push(x).map_err(|_| ErrorCode::NonFiniteInput)?;
            }
            let (offset, scale) = normalisation_mut::<D>(writable(&mut self.model)?)?;
            tracker
                .normalisation(offset, scale)
                .map_err(|_| ErrorCode::Train)?;
            self.crc = None;
        }
        let shape = *self.model.shape();
        let (so, l) = (shape.segmenter_offset(), shape.segmenter_len());
        let mut novelty = 0.0f32;
        let mut n = 0u32;
        for (i, x) in samples.chunks_exact(D).enumerate() {
            let lr = self.learn.state().ok_or(ErrorCode::Internal)?;
            let (centres, spawner) = lr.kmeans.as_mut().ok_or(ErrorCode::Internal)?;
            let seg = net(&self.model)?
                .segment(x, &mut self.work)
                .map_err(|_| ErrorCode::Train)?;
            novelty += seg.novelty();
            n += 1;
            let params = writable(&mut self.model)?
                .get_mut(so..so + l)
                .ok_or(ErrorCode::Internal)?;
            // A novel sample moves no centre: it is kept for a spawn.
            let fire = spawner.observe(seg.mu, seg.novelty());
            if !spawner.is_novel(seg.novelty()) {
                centres
                    .update(&shape, params, seg.mu, seg.label)
                    .map_err(|_| ErrorCode::Train)?;
            }
            let mut spawned = false;
            if fire {
                if let Some(slot) = spawner
                    .spawn(&shape, params, centres, &mut lr.rng)
                    .map_err(|_| ErrorCode::Train)?
                {
                    #[cfg(feature = "defmt")]
                    defmt::info!("learn: spawned centre {=usize}", slot);
                    let used = (0..shape.clusters)
                        .filter(|&k| in_use(&shape, params, k))
                        .count();
                    emit_centre(emit, slot, CentreChange::Spawned, i, used);
                    spawned = true;
                }
            }
            // Retire a starved centre or merge two that coincide (after a move only).
            let mut retired = false;
            let tidied = if spawner.is_novel(seg.novelty()) {
                None
            } else {
                centres
                    .tidy(&shape, params, seg.label, &TIDY)
                    .map_err(|_| ErrorCode::Train)?
            };
            if let Some(t) = tidied {
                let (slot, change) = match t {
                    Tidied::Merged { from, into } => {
                        (from, CentreChange::MergedInto(saturate_u8(into)))
                    }
                    Tidied::Retired { slot } => (slot, CentreChange::Starved),
                };
                #[cfg(feature = "defmt")]
                defmt::info!("learn: retired centre {=usize} ({})", slot, t);
                let used = (0..shape.clusters)
                    .filter(|&k| in_use(&shape, params, k))
                    .count();
                emit_centre(emit, slot, change, i, used);
                retired = true;
            }
            self.crc = None;
            // A spawn or a retirement is saved at once: a power cut must not lose a
            // discovered cluster, nor bring back one that was merged away. Periodic saves
            // count the samples that moved a centre (a novel one moves none).
            let due = !spawner.is_novel(seg.novelty()) && centres.updates() % CHECKPOINT_EVERY == 0;
            if (spawned || retired || due) && self.store.checkpoints().is_some() {
                self.checkpoint(false)?;
            }
        }
        let updates = self
            .learn
            .state_ref()
            .and_then(|l| l.kmeans.as_ref())
            .map_or(0, |(c, _)| c.updates());
        let seg = net(&self.model)?.segmenter_params();
        let used = (0..shape.clusters)
            .filter(|&k| in_use(&shape, seg, k))
            .count();
        Ok(Small::Trained {
            buffered: used as u32,
            steps: updates,
            loss: if n > 0 { novelty / n as f32 } else { f32::NAN },
        })
    }

    pub(super) fn train(
        &mut self,
        samples: &[f32],
        steps: u16,
        settings: Option<&TrainSettings>,
        emit: &mut dyn FnMut(&Response),
    ) -> Result<Small, ErrorCode> {
        if !samples.len().is_multiple_of(D) {
            return Err(ErrorCode::InputLength);
        }
        if !samples.iter().all(|v| v.is_finite()) {
            return Err(ErrorCode::NonFiniteInput);
        }
        if let Some(s) = settings {
            self.start(s)?;
        }
        if self.learn.state().is_some_and(|l| l.kmeans.is_some()) {
            return self.update_centres(samples, emit);
        }
        self.train_steps(samples, steps)
    }

    /// A trainer's part of [`Engine::train`]: buffers the samples, takes the steps.
    #[inline(never)]
    fn train_steps(&mut self, samples: &[f32], steps: u16) -> Result<Small, ErrorCode> {
        let l = self.learn.state().ok_or(ErrorCode::Train)?;
        let t = l.trainer.as_mut().ok_or(ErrorCode::Train)?;
        for x in samples.chunks_exact(D) {
            if let Some(tracker) = l.tracker.as_mut() {
                tracker.push(x).map_err(|_| ErrorCode::NonFiniteInput)?;
            }
            t.push(x).map_err(|_| ErrorCode::NonFiniteInput)?;
        }
        // The buffered samples are encoded afresh at every step: with the normalisation
        // of the stream so far, once per request.
        if let Some(tracker) = l.tracker.as_ref() {
            let (offset, scale) = normalisation_mut::<D>(writable(&mut self.model)?)?;
            tracker
                .normalisation(offset, scale)
                .map_err(|_| ErrorCode::Train)?;
            self.crc = None;
        }
        let mut loss = f32::NAN;
        for _ in 0..steps {
            match t.step(&mut trainable(net_mut(&mut self.model)?)?, &mut l.rng) {
                Ok(r) => {
                    loss = r.loss.total;
                    self.crc = None;
                    if r.steps % CHECKPOINT_EVERY == 0 {
                        if let Some(c) = self.store.checkpoints() {
                            let prefix = resume_prefix(l.settings.as_ref(), &mut l.rng, false)?;
                            c.save_trainer_after(net(&self.model)?, t, &prefix)
                                .map_err(|_| ErrorCode::Storage)?;
                        }
                    }
                }
                // Too few samples yet: the host sends more.
                Err(TrainError::NotEnoughSamples) => break,
                // The divergence guard rejected a spike: the step changed nothing. After
                // `max_rejections` in a row, back to the last checkpoint.
                Err(TrainError::Diverged) => {
                    if let Some(c) = self.store.checkpoints() {
                        let r = c.restore_if_needed_after(
                            &mut trainable(net_mut(&mut self.model)?)?,
                            t,
                            RESUME_PREFIX,
                        );
                        if matches!(r, Ok(Restore::Restored(_))) {
                            self.crc = None;
                        }
                        r.map_err(|_| ErrorCode::Storage)?;
                    }
                }
                // Anything else (a centre initialisation on a collapsed encoder, a
                // non-finite loss) would repeat at every step: say so instead of
                // answering as if training went on.
                Err(_) => return Err(ErrorCode::Train),
            }
        }
        Ok(Small::Trained {
            buffered: t.len() as u32,
            steps: t.steps(),
            loss,
        })
    }
}

/// `model` over writable parameters, for a trainer (`Train` as [`writable`]).
pub(super) fn trainable<P: Params>(
    model: &mut Model<f32, P>,
) -> Result<Model<f32, &mut [f32]>, ErrorCode> {
    model.view(|p| p.writable()).ok_or(ErrorCode::Train)
}

/// The input normalisation in `params`: offsets and scales, `D` each.
pub(super) fn normalisation_mut<const D: usize>(
    params: &mut [f32],
) -> Result<(&mut [f32], &mut [f32]), ErrorCode> {
    params
        .get_mut(..2 * D)
        .and_then(|p| p.split_at_mut_checked(D))
        .ok_or(ErrorCode::Internal)
}

/// The quantisation of a memory of bytes for `model`: codes spanning every feature's
/// normalised range `[-QUANT_SD, QUANT_SD]` in raw units (offset `o`, scale `s`: raw
/// `o - QUANT_SD / s ..= o + QUANT_SD / s`), the lowest bound to the highest. `None`
/// when the normalisation gives no finite span.
pub fn quant_of<const D: usize, P: AsRef<[f32]>>(model: &Model<f32, P>) -> Option<Quant<f32>> {
    let p = model.params();
    let (offset, scale) = p.get(..2 * D)?.split_at_checked(D)?;
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for (&o, &s) in offset.iter().zip(scale) {
        let half = QUANT_SD / s.abs();
        lo = lo.min(o - half);
        hi = hi.max(o + half);
    }
    Quant::spanning(lo, hi)
}

/// The trainer configuration for the host's settings with the default memory ([`CAP`]
/// samples, a ring); `None` when out of range.
pub fn config(s: &TrainSettings) -> Option<TrainConfig<f32>> {
    config_with_memory(s, CAP)
}

/// The trainer configuration for the host's settings with a memory of `mem` samples:
/// up to [`CAP`] a ring whose partners are drawn among the 3 nearest; beyond, a memory
/// kept by [`SCRATCH_POLICY`] with partners among the [`SCRATCH_NEIGHBOURS`] nearest, the
/// balance term on each step's batch ([`SCRATCH_RHO_TENTHS`]), the backward pass and the
/// update layer by layer ([`TrainConfig::layerwise`], but for SegmenterOnly) with each
/// block's gradient clipped to [`SCRATCH_CLIP`], and for Full scope (learning from
/// scratch) [`SCRATCH_WARMUP_STEPS`] of warm-up, the centres initialised on
/// [`SCRATCH_INIT_SAMPLES`] of the memory by 50 Lloyd iterations.
/// `None` when out of range.
pub fn config_with_memory(s: &TrainSettings, mem: usize) -> Option<TrainConfig<f32>> {
    if !(s.lr.is_finite() && s.lr > 0.0) || s.batch == 0 || usize::from(s.batch) > MAX_BATCH {
        return None;
    }
    let mut cfg = TrainConfig::new(s.lr);
    cfg.optim.optimiser = match s.optimiser {
        TrainOptimiser::Adam => Optimiser::adam(s.lr),
        TrainOptimiser::Factored => Optimiser::factored(s.lr),
        TrainOptimiser::FactoredRms => Optimiser::factored_rms(s.lr),
        TrainOptimiser::Sgd { momentum } => {
            if !(0.0..1.0).contains(&momentum) {
                return None;
            }
            Optimiser::sgd(s.lr, momentum)
        }
        // Not a gradient optimiser: no trainer (`Engine` keeps the centres' counts).
        TrainOptimiser::OnlineKMeans { .. } => return None,
    };
    cfg.scope = s.scope.into();
    cfg.batch = usize::from(s.batch);
    if cfg.scope == Scope::Full {
        cfg.warmup_steps = WARMUP_STEPS;
    } else {
        // The adaptation scopes refine a trained model: no warm-up, and the model's
        // centres kept (k-means++ on a 32-sample buffer would throw the trained clusters
        // away; docs/device.md#train-on-the-device).
        cfg.warmup_steps = 0;
        cfg.init_centres = false;
    }
    // Partners among the 3 nearest of the buffer's 32 samples (the host draws from the
    // 10 nearest of the whole set): in so small a buffer the 4th and 5th are often of
    // another class (docs/device.md#train-on-the-device).
    cfg.consistency = Consistency::Neighbours(3);
    if mem > CAP {
        cfg.memory = SCRATCH_POLICY;
        cfg.consistency = Consistency::Neighbours(SCRATCH_NEIGHBOURS);
        cfg.kmeans_iters = 50;
        cfg.init_samples = SCRATCH_INIT_SAMPLES;
        cfg.layerwise = cfg.scope != Scope::SegmenterOnly;
        cfg.loss.gamma = SCRATCH_GAMMA as f32;
        cfg.loss.balance_momentum = SCRATCH_RHO_TENTHS as f32 / 10.0;
        cfg.optim.clip_norm = match SCRATCH_CLIP {
            0 => None,
            c => Some(c as f32),
        };
        if cfg.scope == Scope::Full {
            cfg.warmup_steps = SCRATCH_WARMUP_STEPS;
        }
    }
    Some(cfg)
}
