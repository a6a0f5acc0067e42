//! The `learn` program's engine: the inference service plus online training from
//! streamed samples ([`Request::TrainBatch`]), reading back the full parameter vector
//! ([`Request::ReadWeights`], decoder included) and checkpoints.
//!
//! `no_std`, no allocation, and free of board code: the firmware runs it over static
//! buffers (`src/bin/learn.rs`), and the host tool compiles this very file into its
//! reference run (`hvae device-train`), so that the host repeats the device's schedule
//! with the same code, the same seed and the same core — and can compare the bits.
//!
//! # Training
//! The first `TrainBatch` carries [`TrainSettings`] (scope, optimiser, learning rate,
//! anchors per step); settings start a new [`OnlineTrainer`] (an empty ring buffer of
//! [`CAP`] samples, zeroed optimiser state, the generator re-seeded with [`SEED`]). Each
//! `TrainBatch` pushes its samples, then takes its steps. The schedule is the core's
//! ([`TrainConfig::new`]). Full scope trains from scratch: [`WARMUP_STEPS`] steps of the
//! VAE alone, then the centres by spherical k-means++ on the buffer, then joint
//! training. EncoderAndSegmenter and SegmenterOnly adapt a trained model: joint training
//! from the first step, with the model's centres. The divergence guard is on.
//! A step refused for lack of samples is not an error (the answer says how many steps
//! were taken in all); a step the guard rejects is skipped; any other failed step ends
//! the request with [`ErrorCode::Train`] (the steps before it stay applied).
//!
//! # Checkpoints
//! With checkpoint slots ([`Store::checkpoints`], [`hvae::checkpoint`]: two slots,
//! sequence number, CRC, commit word), the engine saves the weights, the optimiser state
//! and the step counts every [`CHECKPOINT_EVERY`] steps and on [`Request::Checkpoint`]
//! (the weights alone when no training is under way); when the divergence guard has
//! rejected too many steps in a row, it restores the last checkpoint; [`Learner::restore`]
//! puts the newest checkpoint's weights back at boot. A checkpoint of one (scope,
//! optimiser) does not count as valid for another, so the first save after a change of
//! scope may overwrite the newest checkpoint of the old scope.
//!
//! # Memory
//! Buffers come from a [`Store`]: one scratch buffer of [`scratch_len`] and one
//! optimiser buffer of [`optim_len`] scalars (sized for the largest scope, Full with
//! Adam); a weight load stages the incoming blob's parameters in the scratch buffer, so
//! a failed load leaves the weights untouched without a second parameter copy.

use embedded_storage::nor_flash::NorFlash;
use hvae::checkpoint::{Checkpoints, Layout};
use hvae::model::Model;
use hvae::optim::{state_len, OptimKind, Optimiser};
use hvae::protocol::answer::{answer_encode, answer_segment};
use hvae::protocol::{
    blob_header, DeviceInfo, ErrorCode, Request, Response, TrainOptimiser, TrainSettings,
    WeightLoader, CAP_CHECKPOINT, CAP_ENCODE, CAP_LOAD, CAP_READ, CAP_SEGMENT, CAP_TRAIN,
    MAX_VALUES,
};
use hvae::shape::{Scope, Shape};
use hvae::trainer::{Consistency, OnlineTrainer, TrainConfig, TrainError};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Seed of the training generator, re-applied by every new [`TrainSettings`].
pub const SEED: u64 = 0x006c_6561_726e; // "learn"
/// Samples in the training ring buffer.
pub const CAP: usize = 32;
/// Most anchors per step ([`TrainSettings::batch`]).
pub const MAX_BATCH: usize = 8;
/// Steps of the VAE alone before the centres are initialised (Full scope). Far longer
/// than the core's default 200: with 8 anchors per step, a short warm-up leaves k-means++
/// a barely trained encoder (the measurements behind the choice are in
/// docs/device.md#train-on-the-device).
pub const WARMUP_STEPS: u32 = 1000;
/// Steps between two periodic checkpoints (when the device has checkpoint slots): 500,
/// or the positive integer in the environment variable `HVAE_CHECKPOINT_EVERY` at build
/// time (flash wear against work lost on a reset is the firmware's choice).
pub const CHECKPOINT_EVERY: u32 = match option_env!("HVAE_CHECKPOINT_EVERY") {
    None => 500,
    Some(s) => match u32::from_str_radix(s, 10) {
        Ok(n) if n > 0 => n,
        _ => panic!("HVAE_CHECKPOINT_EVERY must be a positive integer"),
    },
};

/// Every (scope, optimiser) a checkpoint may have been saved with.
const LAYOUTS: [(Scope, OptimKind); 6] = [
    (Scope::Full, OptimKind::Adam),
    (Scope::Full, OptimKind::Sgd),
    (Scope::EncoderAndSegmenter, OptimKind::Adam),
    (Scope::EncoderAndSegmenter, OptimKind::Sgd),
    (Scope::SegmenterOnly, OptimKind::Adam),
    (Scope::SegmenterOnly, OptimKind::Sgd),
];

/// The layout of a checkpoint of the weights alone (no trainer): the smallest state.
const WEIGHTS_ONLY: (Scope, OptimKind) = (Scope::SegmenterOnly, OptimKind::Sgd);

/// Requests the engine serves.
pub const CAPABILITIES: u32 =
    CAP_SEGMENT | CAP_ENCODE | CAP_LOAD | CAP_READ | CAP_CHECKPOINT | CAP_TRAIN;

const SCOPES: [Scope; 3] = [
    Scope::Full,
    Scope::EncoderAndSegmenter,
    Scope::SegmenterOnly,
];

/// Scalars of the scratch buffer: the trainer's storage for the largest scope, and at
/// least one parameter vector (the staging area of a load).
pub const fn scratch_len(shape: &Shape) -> usize {
    let mut n = shape.param_len();
    let mut i = 0;
    while i < SCOPES.len() {
        let s = TrainConfig::<f32>::storage_len(shape, SCOPES[i], MAX_BATCH, CAP);
        if s > n {
            n = s;
        }
        i += 1;
    }
    n
}

/// Scalars of the optimiser buffer: Adam's state over the Full scope (the largest).
pub const fn optim_len(shape: &Shape) -> usize {
    let r = shape.scope_range(Scope::Full);
    state_len(OptimKind::Adam, r.end - r.start)
}

/// Where the engine's big buffers live, and where checkpoints go.
pub trait Store {
    /// A buffer of scalars.
    type Buf: AsRef<[f32]> + AsMut<[f32]>;
    /// A zeroed scratch buffer of `scratch` scalars and a zeroed optimiser buffer of
    /// `optim` scalars. The engine calls this only after dropping every buffer of the
    /// previous call (so a device may hand out the same static memory again). `None`
    /// when the lengths exceed the memory.
    fn take(&mut self, scratch: usize, optim: usize) -> Option<(Self::Buf, Self::Buf)>;
    /// The flash the checkpoints live in.
    type Flash: NorFlash;
    /// The two checkpoint slots ([`hvae::checkpoint`]), if the device has them; they must
    /// hold a checkpoint of the Full scope with Adam ([`checkpoint_slot_len`]).
    fn checkpoints(&mut self) -> Option<&mut Checkpoints<Self::Flash>>;
}

/// Bytes of one checkpoint slot on flash `F`: the largest layout (Full scope, Adam).
pub const fn checkpoint_slot_len<F: NorFlash>(shape: &Shape) -> usize {
    hvae::checkpoint::slot_len::<f32, F>(shape, Scope::Full, OptimKind::Adam)
}

type Trainer<const D: usize, B> = OnlineTrainer<f32, D, CAP, B, B>;

/// The engine: a full model (decoder included) in `P`, a workspace of `W` scalars,
/// `D` inputs.
pub struct Learner<const D: usize, const W: usize, P, S: Store> {
    model: Model<f32, P>,
    /// CRC of the current weights' blob; `None` after training changed them.
    crc: Option<u32>,
    loader: WeightLoader,
    staging: Option<S::Buf>,
    trainer: Option<Trainer<D, S::Buf>>,
    rng: Xoshiro256PlusPlus,
    work: [f32; W],
    store: S,
    max_frame: usize,
}

impl<const D: usize, const W: usize, P, S> Learner<D, W, P, S>
where
    P: AsRef<[f32]> + AsMut<[f32]>,
    S: Store,
{
    /// An engine running `model` (all of its parameters), whose blob has CRC `crc`;
    /// `max_frame` is the longest request frame the caller receives.
    pub fn new(
        model: Model<f32, P>,
        crc: u32,
        store: S,
        max_frame: usize,
    ) -> Result<Self, ErrorCode> {
        let shape = *model.shape();
        if !model.has_decoder() || shape.input != D || shape.work_len() > W {
            return Err(ErrorCode::Internal);
        }
        Ok(Learner {
            loader: WeightLoader::new(shape),
            model,
            crc: Some(crc),
            staging: None,
            trainer: None,
            rng: Xoshiro256PlusPlus::seed_from_u64(SEED),
            work: [0.0; W],
            store,
            max_frame,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model<f32, P> {
        &self.model
    }

    /// The store (buffers and checkpoint slots), giving up the engine: what survives a
    /// reset, for a test to boot a new engine on.
    pub fn into_store(self) -> S {
        self.store
    }

    /// CRC of the current weights' blob (computed again after training).
    pub fn crc(&mut self) -> u32 {
        match self.crc {
            Some(c) => c,
            None => {
                let c = blob_crc(self.model.shape(), self.model.params());
                self.crc = Some(c);
                c
            }
        }
    }

    /// Answers one request: its response, or for `Segment` and `Encode` the last of
    /// their responses (one per sample; [`Learner::handle_each`] gives them all).
    pub fn handle(&mut self, req: &Request) -> Response {
        let mut last = Response::Ack;
        self.handle_each(req, &mut |r| last = r.clone());
        last
    }

    /// Answers one request, handing each response to `emit`: one, or one per sample for
    /// `Segment` and `Encode` (the core's `protocol::answer`, two samples at a time
    /// when `W` holds two workspaces).
    pub fn handle_each(&mut self, req: &Request, emit: &mut dyn FnMut(&Response)) {
        let mut out = Response::Ack;
        match req {
            Request::Segment { sample } => {
                answer_segment::<_, true>(&self.model, sample, &mut self.work, &mut out, emit)
            }
            Request::Encode { sample } => {
                answer_encode::<_, true>(&self.model, sample, &mut self.work, &mut out, emit)
            }
            _ => emit(&self.try_handle(req).unwrap_or_else(Response::Error)),
        }
    }

    fn try_handle(&mut self, req: &Request) -> Result<Response, ErrorCode> {
        match req {
            Request::Info => {
                let shape = *self.model.shape();
                let crc = self.crc();
                Ok(Response::Info(DeviceInfo::new(
                    &shape,
                    shape.param_len(),
                    crc,
                    self.max_frame,
                    CAPABILITIES,
                )))
            }
            // Answered by `handle_each`.
            Request::Segment { .. } | Request::Encode { .. } => Err(ErrorCode::Internal),
            Request::ReadWeights { offset, count } => {
                let start = *offset as usize;
                let n = usize::from(*count);
                let p = self.model.params();
                let values = start
                    .checked_add(n)
                    .filter(|&end| n <= MAX_VALUES && end <= p.len())
                    .map(|end| &p[start..end])
                    .ok_or(ErrorCode::OutOfRange)?;
                Ok(Response::Weights {
                    offset: *offset,
                    values: heapless::Vec::from_slice(values).map_err(|_| ErrorCode::Internal)?,
                })
            }
            Request::LoadWeights {
                offset,
                bytes,
                last,
            } => {
                let r = self.load(*offset, bytes, *last);
                if r.is_err() || *last {
                    self.staging = None;
                }
                r
            }
            Request::Checkpoint => {
                self.checkpoint()?;
                Ok(Response::Checkpointed {
                    weights_crc: self.crc(),
                })
            }
            Request::TrainBatch {
                samples,
                steps,
                settings,
            } => self.train(samples, *steps, settings.as_ref()),
        }
    }

    /// Saves a checkpoint: with the trainer's optimiser state and step counts while
    /// training, else the weights alone.
    fn checkpoint(&mut self) -> Result<(), ErrorCode> {
        if self.store.checkpoints().is_none() {
            return Err(ErrorCode::Unsupported);
        }
        if let Some(t) = self.trainer.as_ref() {
            let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
            return c
                .save_trainer(&self.model, t)
                .map(|_| ())
                .map_err(|_| ErrorCode::Storage);
        }
        let layout = Layout::new::<f32>(*self.model.shape(), WEIGHTS_ONLY.0, WEIGHTS_ONLY.1);
        self.staging = None;
        let (_, zeros) = self
            .store
            .take(0, layout.state())
            .ok_or(ErrorCode::Internal)?;
        let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
        c.save(&layout, self.model.params(), zeros.as_ref(), 0, 0)
            .map(|_| ())
            .map_err(|_| ErrorCode::Storage)
    }

    /// At boot: the weights of the newest valid checkpoint of any layout, if there is
    /// one (the optimiser state is not kept: training restarts with the host's next
    /// settings). Returns the checkpoint's sequence number.
    pub fn restore(&mut self) -> Result<Option<u32>, ErrorCode> {
        let shape = *self.model.shape();
        let mut best: Option<(u32, Layout)> = None;
        for (scope, kind) in LAYOUTS {
            let layout = Layout::new::<f32>(shape, scope, kind);
            let Some(c) = self.store.checkpoints() else {
                return Ok(None);
            };
            if let Some(l) = c.newest(&layout).map_err(|_| ErrorCode::Storage)? {
                // Serial-number order: the counter may wrap.
                if best.is_none_or(|(s, _)| (l.seq.wrapping_sub(s) as i32) > 0) {
                    best = Some((l.seq, layout));
                }
            }
        }
        let Some((seq, layout)) = best else {
            return Ok(None);
        };
        self.trainer = None;
        self.staging = None;
        let (_, mut state) = self
            .store
            .take(0, layout.state())
            .ok_or(ErrorCode::Internal)?;
        let c = self.store.checkpoints().ok_or(ErrorCode::Internal)?;
        c.load(&layout, self.model.params_mut(), state.as_mut())
            .map_err(|_| ErrorCode::Storage)?;
        self.crc = None;
        Ok(Some(seq))
    }

    fn load(&mut self, offset: u32, bytes: &[u8], last: bool) -> Result<Response, ErrorCode> {
        let n = self.model.shape().param_len();
        if offset == 0 {
            // New weights end any training: its buffers become the staging area.
            self.trainer = None;
            self.staging = None;
            let (scratch, _) = self.store.take(n, 0).ok_or(ErrorCode::Internal)?;
            self.staging = Some(scratch);
        }
        let Some(staging) = self.staging.as_mut() else {
            self.loader.reset();
            return Err(ErrorCode::LoadOrder { expected: 0 });
        };
        let stage = staging.as_mut();
        self.loader.feed(offset, bytes, |i, v| {
            *stage.get_mut(i).ok_or(ErrorCode::LoadLength)? = v;
            Ok(())
        })?;
        if !last {
            return Ok(Response::Ack);
        }
        let crc = self.loader.finish()?;
        let stage = staging.as_ref().get(..n).ok_or(ErrorCode::Internal)?;
        let params = self.model.params_mut();
        // Equal lengths (checked, so that no panic path is linked in).
        if params.len() != stage.len() {
            return Err(ErrorCode::Internal);
        }
        params.copy_from_slice(stage);
        self.crc = Some(crc);
        Ok(Response::Loaded { weights_crc: crc })
    }

    fn train(
        &mut self,
        samples: &[f32],
        steps: u16,
        settings: Option<&TrainSettings>,
    ) -> Result<Response, ErrorCode> {
        if !samples.len().is_multiple_of(D) {
            return Err(ErrorCode::InputLength);
        }
        if !samples.iter().all(|v| v.is_finite()) {
            return Err(ErrorCode::NonFiniteInput);
        }
        if let Some(s) = settings {
            let cfg = config(s).ok_or(ErrorCode::Train)?;
            let shape = *self.model.shape();
            self.trainer = None;
            self.staging = None;
            self.loader.reset();
            let n = shape.scope_range(cfg.scope).len();
            let (scratch, optim) = self
                .store
                .take(
                    TrainConfig::<f32>::storage_len(&shape, cfg.scope, cfg.batch, CAP),
                    state_len(cfg.optim.optimiser.kind(), n),
                )
                .ok_or(ErrorCode::Train)?;
            let t = Trainer::<D, S::Buf>::new(&shape, cfg, scratch, optim)
                .map_err(|_| ErrorCode::Train)?;
            self.trainer = Some(t);
            self.rng = Xoshiro256PlusPlus::seed_from_u64(SEED);
        }
        let t = self.trainer.as_mut().ok_or(ErrorCode::Train)?;
        for x in samples.chunks_exact(D) {
            t.push(x).map_err(|_| ErrorCode::NonFiniteInput)?;
        }
        let mut loss = f32::NAN;
        for _ in 0..steps {
            match t.step(&mut self.model, &mut self.rng) {
                Ok(r) => {
                    loss = r.loss.total;
                    self.crc = None;
                    if r.steps % CHECKPOINT_EVERY == 0 {
                        if let Some(c) = self.store.checkpoints() {
                            c.save_trainer(&self.model, t)
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
                        let r = c.restore_if_needed(&mut self.model, t);
                        if matches!(r, Ok(hvae::checkpoint::Restore::Restored(_))) {
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
        Ok(Response::Trained {
            buffered: t.len() as u32,
            steps: t.steps(),
            loss,
        })
    }
}

/// The trainer configuration for the host's settings; `None` when out of range.
pub fn config(s: &TrainSettings) -> Option<TrainConfig<f32>> {
    if !(s.lr.is_finite() && s.lr > 0.0) || s.batch == 0 || usize::from(s.batch) > MAX_BATCH {
        return None;
    }
    let mut cfg = TrainConfig::new(s.lr);
    cfg.optim.optimiser = match s.optimiser {
        TrainOptimiser::Adam => Optimiser::adam(s.lr),
        TrainOptimiser::Sgd { momentum } => {
            if !(0.0..1.0).contains(&momentum) {
                return None;
            }
            Optimiser::sgd(s.lr, momentum)
        }
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
    Some(cfg)
}

/// CRC-32 of the weight blob of `params` (header, values, as [`hvae::blob::write`]
/// computes it), without building the blob.
pub fn blob_crc(shape: &Shape, params: &[f32]) -> u32 {
    static CRC: crc::Crc<u32, crc::NoTable> =
        crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = CRC.digest();
    d.update(&blob_header(shape));
    for v in params {
        d.update(&v.to_le_bytes());
    }
    d.finalize()
}
