//! The engine's checkpoints: what a `Checkpoint` request and a training's periodic
//! saves write (the weights, and what the training under way needs to resume), and how
//! an engine restores the newest one at boot.

use super::engine::{net, net_mut, saturate_u8, writable, Engine};
use super::learning::Learning;
use super::training::{normalisation_mut, trainable};
use super::{kmeans_extra, NORM_DECAY, RESUME_PREFIX};
use crate::infer::normalise::Tracker;
use crate::protocol::{ErrorCode, TrainSettings};
use crate::shape::Scope;
use crate::store::checkpoint::{trainer_layout, Checkpoints, Layout, Loaded};
use crate::store::record::Record;
use crate::train::centres::{CentreCounts, Spawner};
use crate::train::optim::OptimKind;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Every (scope, optimiser) a checkpoint may have been saved with: each of the scopes
/// with each of the optimisers.
const LAYOUTS: [(Scope, OptimKind); 12] = {
    let scopes = [
        Scope::Full,
        Scope::EncoderAndSegmenter,
        Scope::SegmenterOnly,
    ];
    let kinds = [
        OptimKind::Adam,
        OptimKind::Sgd,
        OptimKind::Factored,
        OptimKind::FactoredRms,
    ];
    let mut pairs = [(Scope::Full, OptimKind::Adam); 12];
    let mut i = 0;
    while i < pairs.len() {
        pairs[i] = (scopes[i / kinds.len()], kinds[i % kinds.len()]);
        i += 1;
    }
    pairs
};

/// The layout of a checkpoint of the weights alone (no trainer): the smallest state.
const WEIGHTS_ONLY: (Scope, OptimKind) = (Scope::SegmenterOnly, OptimKind::Sgd);

engine_impl! {
    /// Saves a checkpoint: the weights, and what the training under way needs to resume
    /// (a trainer's optimiser state, step counts and record; online k-means' counts,
    /// spawner and tracker). A model of its inference parameters alone (it adapts by
    /// online k-means only) saves what it adapts: its normalisation and segmenter
    /// ([`Layout::adapted`], named by the deployed weights' CRC). With `fork` (a
    /// `Checkpoint` request, between two requests) the generator goes on from the seed it
    /// stores ([`resume_prefix`]); without (a save in the middle of a request), it is
    /// left alone.
    #[inline(never)]
    pub(super) fn checkpoint(&mut self, fork: bool) -> Result<(), ErrorCode> {
        // Weights in flash slots were saved as they were loaded, and such an engine
        // trains nothing: there is nothing more to save.
        if self.model.slots().is_some() {
            return Ok(());
        }
        if self.store.checkpoints().is_none() {
            return Err(ErrorCode::Unsupported);
        }
        if self.inference_only() {
            return self.checkpoint_adapted(fork);
        }
        if let Some(l) = self.learn.state() {
            if let Some(t) = l.trainer.as_ref() {
                let prefix = resume_prefix(l.settings.as_ref(), &mut l.rng, true)?;
                let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
                return c
                    .save_trainer_after(net(&self.model)?, t, &prefix)
                    .map(|_| ())
                    .map_err(|_| ErrorCode::Storage);
            }
        }
        let shape = *self.model.shape();
        let weights = Layout::new::<f32>(shape, WEIGHTS_ONLY.0, WEIGHTS_ONLY.1);
        self.staging = None;
        let (_, zeros) = self
            .store
            .take(0, weights.state())
            .ok_or(ErrorCode::Internal)?;
        // Online k-means: its settings, counts, spawner and tracker after the weights.
        if let Some(l) = self.learn.state() {
            if let Some((counts, spawner)) = l.kmeans.as_ref() {
                let prefix = resume_prefix(l.settings.as_ref(), &mut l.rng, fork)?;
                let layout = weights.with_extra(Self::KMEANS_EXTRA);
                let tracker = l.tracker.as_ref();
                let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
                return c
                    .save_with_extra(
                        &layout,
                        net(&self.model)?.params(),
                        zeros.as_ref(),
                        0,
                        counts.updates(),
                        &mut |out| put_kmeans(out, &prefix, counts, spawner, tracker),
                    )
                    .map(|_| ())
                    .map_err(|_| ErrorCode::Storage);
            }
        }
        let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
        c.save(&weights, net(&self.model)?.params(), zeros.as_ref(), 0, 0)
            .map(|_| ())
            .map_err(|_| ErrorCode::Storage)
    }

    /// Whether the model is an `f32` one of its inference parameters alone (no decoder):
    /// its checkpoints hold what online k-means adapts ([`Layout::adapted`]).
    fn inference_only(&self) -> bool {
        self.model.f32().is_some_and(|m| !m.has_decoder())
    }

    /// [`Engine::checkpoint`] of a model of its inference parameters alone: its
    /// normalisation and segmenter, with the state of online k-means when it runs.
    fn checkpoint_adapted(&mut self, fork: bool) -> Result<(), ErrorCode> {
        let adapted = Layout::adapted::<f32>(*self.model.shape(), self.deployed);
        let Engine {
            store,
            model,
            learn,
            ..
        } = self;
        let c = store.checkpoints().ok_or(ErrorCode::Unsupported)?;
        let saved = match learn.state() {
            Some(Learning {
                kmeans: Some((counts, spawner)),
                tracker,
                settings,
                rng,
                ..
            }) => {
                let prefix = resume_prefix(settings.as_ref(), rng, fork)?;
                let tracker = tracker.as_ref();
                c.save_adapted(
                    &adapted.with_extra(Self::KMEANS_EXTRA),
                    net(&*model)?.params(),
                    counts.updates(),
                    &mut |out| put_kmeans(out, &prefix, counts, spawner, tracker),
                )
            }
            _ => c.save_adapted(&adapted, net(&*model)?.params(), 0, &mut |_| {}),
        };
        saved.map(|_| ()).map_err(|_| ErrorCode::Storage)
    }

    /// Extra bytes of a checkpoint of online k-means ([`kmeans_extra`]).
    const KMEANS_EXTRA: usize = kmeans_extra::<D>();

    /// At boot: the newest valid checkpoint of any layout, if there is one. One saved
    /// while training resumes that training where it stopped: a trainer (its settings,
    /// generator seed, optimiser state, step count and memory of past samples; a
    /// `SegmenterAndNormalisation` trainer restarts its normalisation tracker from the
    /// saved normalisation) or online k-means (its settings, the centres' counts, the
    /// spawner's memory of novelty and the tracker). The next `TrainBatch` without
    /// settings goes on as if there had been no reset. Any other checkpoint puts its
    /// weights back. Returns the checkpoint's sequence number.
    ///
    /// A model of its inference parameters alone restores what it adapted
    /// ([`Layout::adapted`]: its normalisation and segmenter, and online k-means' state
    /// when it was running), and only from a checkpoint of the same shape adapted on the
    /// same deployed weights (their CRC); a corrupt newest slot leaves the older one.
    pub fn restore(&mut self) -> Result<Option<u32>, ErrorCode> {
        if self.inference_only() {
            return self.restore_adapted();
        }
        let shape = *self.model.shape();
        // Checkpoints of a trainer, and of weights (or of a trainer from before the
        // resume record) without extra bytes.
        let mut best: Option<(Loaded, Layout)> = None;
        let kmeans = Layout::new::<f32>(shape, WEIGHTS_ONLY.0, WEIGHTS_ONLY.1)
            .with_extra(Self::KMEANS_EXTRA);
        if let Some(c) = self.store.checkpoints() {
            if let Some(l) = c.newest(&kmeans).map_err(|_| ErrorCode::Storage)? {
                best = Some((l, kmeans));
            }
        }
        for (scope, kind) in LAYOUTS {
            let layouts = [
                trainer_layout::<f32, D, MEM, S::Buf, S::Buf, E>(
                    &shape,
                    scope,
                    kind,
                    RESUME_PREFIX,
                ),
                Layout::new::<f32>(shape, scope, kind),
            ];
            for layout in layouts {
                let Some(c) = self.store.checkpoints() else {
                    return Ok(None);
                };
                if let Some(l) = c.newest(&layout).map_err(|_| ErrorCode::Storage)? {
                    // Serial-number order: the counter may wrap.
                    if best.is_none_or(|(b, _)| (l.seq.wrapping_sub(b.seq) as i32) > 0) {
                        best = Some((l, layout));
                    }
                }
            }
        }
        let Some((found, layout)) = best else {
            return Ok(None);
        };
        self.learn.stop();
        self.staging = None;
        if layout == kmeans && self.resume_kmeans(&layout)? {
            return Ok(Some(found.seq));
        }
        if layout != kmeans && layout.extra() > 0 && self.resume(&layout, &found)? {
            return Ok(Some(found.seq));
        }
        let (_, mut state) = self
            .store
            .take(0, layout.state())
            .ok_or(ErrorCode::Internal)?;
        let c: &mut Checkpoints<S::Flash> = self.store.checkpoints().ok_or(ErrorCode::Internal)?;
        c.load(&layout, writable(&mut self.model)?, state.as_mut())
            .map_err(|_| ErrorCode::Storage)?;
        self.crc = None;
        Ok(Some(found.seq))
    }

    /// [`Engine::restore`] of a model of its inference parameters alone: the newest
    /// valid checkpoint of what it adapted, with or without online k-means' state.
    fn restore_adapted(&mut self) -> Result<Option<u32>, ErrorCode> {
        let adapted = Layout::adapted::<f32>(*self.model.shape(), self.deployed);
        let kmeans = adapted.with_extra(Self::KMEANS_EXTRA);
        let Some(c) = self.store.checkpoints() else {
            return Ok(None);
        };
        let running = c.newest(&kmeans).map_err(|_| ErrorCode::Storage)?;
        let values = c.newest(&adapted).map_err(|_| ErrorCode::Storage)?;
        let (found, layout) = match (running, values) {
            (Some(k), Some(v)) if (v.seq.wrapping_sub(k.seq) as i32) > 0 => (v, adapted),
            (Some(k), _) => (k, kmeans),
            (None, Some(v)) => (v, adapted),
            (None, None) => return Ok(None),
        };
        self.learn.stop();
        self.staging = None;
        if layout == kmeans && self.resume_kmeans(&layout)? {
            return Ok(Some(found.seq));
        }
        let c = self.store.checkpoints().ok_or(ErrorCode::Internal)?;
        c.load_adapted(&layout, writable(&mut self.model)?, &mut |_, _| {})
            .map_err(|_| ErrorCode::Storage)?
            .ok_or(ErrorCode::Storage)?;
        self.crc = None;
        Ok(Some(found.seq))
    }

    /// Resumes the online k-means of the newest checkpoint of `layout` (weights, or
    /// for a model of its inference parameters alone its normalisation and segmenter;
    /// settings, counts, spawner, tracker). `false` (nothing resumed) when the settings
    /// do not start online k-means here.
    fn resume_kmeans(&mut self, layout: &Layout) -> Result<bool, ErrorCode> {
        let c = self.store.checkpoints().ok_or(ErrorCode::Internal)?;
        let Some(found) = c.newest(layout).map_err(|_| ErrorCode::Storage)? else {
            return Ok(false);
        };
        let mut prefix = [0u8; RESUME_PREFIX];
        c.read_extra(layout, &found, 0, &mut prefix)
            .map_err(|_| ErrorCode::Storage)?;
        let Some((settings, rng)) = read_resume_prefix(&prefix) else {
            return Ok(false);
        };
        if self.start(&settings).is_err() || self.learn.state().is_none_or(|l| l.kmeans.is_none()) {
            self.learn.stop();
            return Ok(false);
        }
        // A whole parameter vector comes with the (zero) state of its layout.
        let adapted = self.inference_only();
        let mut zeros = match adapted {
            true => None,
            false => Some(
                self.store
                    .take(0, layout.state())
                    .ok_or(ErrorCode::Internal)?
                    .1,
            ),
        };
        let Engine {
            store,
            model,
            learn,
            ..
        } = self;
        let Learning {
            kmeans,
            tracker,
            rng: generator,
            ..
        } = learn.state().ok_or(ErrorCode::Internal)?;
        // The spawner's 2-means draws from where the saved run's generator went on.
        *generator = rng;
        let (counts, spawner) = kmeans.as_mut().ok_or(ErrorCode::Internal)?;
        let params = writable(model)?;
        let c = store.checkpoints().ok_or(ErrorCode::Internal)?;
        let (nc, ns) = (CentreCounts::LEN, Spawner::LEN);
        let mut extra = |at: usize, b| match at.checked_sub(RESUME_PREFIX) {
            Some(i) if i < nc => counts.set(i, b),
            Some(i) if i < nc + ns => spawner.set(i - nc, b),
            Some(i) => {
                if let Some(t) = tracker.as_mut() {
                    t.set(i - nc - ns, b);
                }
            }
            None => {}
        };
        let loaded = match zeros.as_mut() {
            None => c.load_adapted(layout, params, &mut extra),
            Some(z) => c.load_with_extra(layout, params, z.as_mut(), &mut extra),
        }
        .map_err(|_| ErrorCode::Storage)?;
        if loaded.is_none() {
            return Err(ErrorCode::Storage);
        }
        self.crc = None;
        Ok(true)
    }

    /// Resumes the training of the checkpoint `found` of a trainer: its settings start
    /// a trainer, the checkpoint fills it, the generator goes on from the saved state.
    /// `false` (nothing resumed) when the settings do not start a trainer here.
    fn resume(&mut self, layout: &Layout, found: &Loaded) -> Result<bool, ErrorCode> {
        let mut prefix = [0u8; RESUME_PREFIX];
        let c = self.store.checkpoints().ok_or(ErrorCode::Internal)?;
        c.read_extra(layout, found, 0, &mut prefix)
            .map_err(|_| ErrorCode::Storage)?;
        let Some((settings, rng)) = read_resume_prefix(&prefix) else {
            return Ok(false);
        };
        if self.start(&settings).is_err() || self.learn.state().is_none_or(|l| l.trainer.is_none())
        {
            self.learn.stop();
            return Ok(false);
        }
        let c = self.store.checkpoints().ok_or(ErrorCode::Internal)?;
        let l = self.learn.state().ok_or(ErrorCode::Internal)?;
        let t = l.trainer.as_mut().ok_or(ErrorCode::Internal)?;
        let loaded = c
            .restore_trainer_after(&mut trainable(net_mut(&mut self.model)?)?, t, RESUME_PREFIX)
            .map_err(|_| ErrorCode::Storage)?;
        if loaded.is_none() {
            return Err(ErrorCode::Storage);
        }
        l.rng = rng;
        // The tracker restarts from the restored normalisation (its statistics are not
        // part of the checkpoint).
        if l.tracker.is_some() {
            let (offset, scale) = normalisation_mut::<D>(writable(&mut self.model)?)?;
            let tracker = Tracker::from_normalisation(offset, scale, NORM_DECAY)
                .map_err(|_| ErrorCode::Train)?;
            l.tracker = Some(tracker);
        }
        self.crc = None;
        Ok(true)
    }
}

/// Bytes of the engine's settings in a checkpoint's prefix (a length byte, then the
/// postcard encoding); the generator's seed follows.
const SETTINGS_BYTES: usize = RESUME_PREFIX - 32;

/// The engine's part of a checkpoint of its trainer ([`RESUME_PREFIX`] bytes, before the
/// trainer's record): the training settings (a length byte and their postcard
/// encoding), then a seed of 32 bytes for the generator of a resumed run
/// (`Xoshiro256PlusPlus::from_seed(seed)`). The generator's state cannot be read out, so
/// with `fork` (a `Checkpoint` request, between two requests) the seed is drawn from the
/// generator and the generator re-seeded with it: a run that resumes from that
/// checkpoint draws what the run that saved it draws next. Without (a periodic save, in
/// the middle of a request), the seed comes from a copy and the generator goes on
/// undisturbed: a run's bits do not depend on its periodic saves, and one resumed from
/// such a save draws its own stream. `Internal` without settings (no training) or when
/// they do not fit.
pub(super) fn resume_prefix(
    settings: Option<&TrainSettings>,
    rng: &mut Xoshiro256PlusPlus,
    fork: bool,
) -> Result<[u8; RESUME_PREFIX], ErrorCode> {
    let settings = settings.ok_or(ErrorCode::Internal)?;
    let mut out = [0u8; RESUME_PREFIX];
    let (a, seed) = out.split_at_mut(SETTINGS_BYTES);
    let (len, rest) = a.split_first_mut().ok_or(ErrorCode::Internal)?;
    let n = postcard::to_slice(settings, rest)
        .map_err(|_| ErrorCode::Internal)?
        .len();
    *len = saturate_u8(n);
    if fork {
        rng.fill_bytes(seed);
        *rng = Xoshiro256PlusPlus::from_seed(seed.try_into().map_err(|_| ErrorCode::Internal)?);
    } else {
        rng.clone().fill_bytes(seed);
    }
    Ok(out)
}

/// Writes the extra bytes of a checkpoint of online k-means ([`kmeans_extra`]): the
/// [`resume_prefix`], the centres' counts, the spawner, and the tracker (a fresh one
/// when the normalisation is not tracked: the layout has a tracker either way).
fn put_kmeans<const D: usize>(
    out: &mut dyn FnMut(&[u8]),
    prefix: &[u8; RESUME_PREFIX],
    counts: &CentreCounts,
    spawner: &Spawner,
    tracker: Option<&Tracker<D>>,
) {
    out(prefix);
    counts.put(out);
    spawner.put(out);
    match tracker {
        Some(t) => t.put(out),
        None => Tracker::<D>::new(1.0).put(out),
    }
}

/// The settings and the generator of a prefix of [`resume_prefix`]; `None` when it does
/// not decode.
fn read_resume_prefix(p: &[u8; RESUME_PREFIX]) -> Option<(TrainSettings, Xoshiro256PlusPlus)> {
    let (a, seed) = p.split_at(SETTINGS_BYTES);
    let (&len, rest) = a.split_first()?;
    let settings = postcard::from_bytes(rest.get(..usize::from(len))?).ok()?;
    Some((
        settings,
        Xoshiro256PlusPlus::from_seed(seed.try_into().ok()?),
    ))
}
