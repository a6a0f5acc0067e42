//! The engine: one request dispatch for every device that serves the protocol.

use super::learning::{Learning, Learns, Trainer};
use super::{
    Params, Slots, Store, CAP, CHECKPOINT_EVERY, LEARN, MAX_BATCH, NORM_DECAY, QUANT_SD,
    RESUME_PREFIX, SCRATCH_INIT_SAMPLES, SCRATCH_NEIGHBOURS, SCRATCH_WARMUP_STEPS, SEED, TIDY,
    WARMUP_STEPS,
};
use crate::infer::model::Model;
use crate::infer::normalise::Tracker;
use crate::protocol::answer::{answer_encode, answer_segment};
use crate::protocol::borrowed;
use crate::protocol::{
    blob_header, CentreChange, DeviceInfo, ErrorCode, FrameError, Request, Response,
    TrainOptimiser, TrainScope, TrainSettings, WeightLoader, CAP_CHECKPOINT, CAP_ENCODE, CAP_LOAD,
    CAP_READ, CAP_SEGMENT, CAP_TRAIN, MAX_SAMPLE, MAX_VALUES,
};
use crate::shape::{Scope, Shape};
use crate::store::checkpoint::{trainer_layout, Checkpoints, Layout, Loaded, Restore};
use crate::store::record::Record;
use crate::train::centres::{
    in_use, CentreCounts, SpawnRule, Spawner, Tidied, MAX_ONLINE_CLUSTERS,
};
use crate::train::optim::{OptimKind, Optimiser};
use crate::train::samples::{Policy, Quant, Stored};
use crate::train::trainer::{Consistency, TrainConfig, TrainError};
use core::marker::PhantomData;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

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

/// Where the values of a load under way go: a store buffer, copied over the weights
/// when the blob checks out (weights in RAM), or the flash slot not in use (weights in
/// flash: [`Params::slots`]).
enum Staging<B> {
    Ram(B),
    Slot,
}

/// The engine: a model in `P` (all of its parameters; the decoder too when it trains),
/// a workspace of `W` scalars (two model workspaces answer samples two at a time), `D`
/// inputs, buffers and checkpoint slots from the store `S`, and the requests it serves
/// in `CAPS` ([`LEARN`](super::LEARN), [`INFER`](super::INFER)): a request outside them
/// is answered [`ErrorCode::Unsupported`], and its code is not linked.
///
/// The trainer remembers `MEM` past samples, each value stored as `E`: by default the
/// [`CAP`] most recent as `f32` (a ring). A larger memory (`MEM > CAP`) keeps a
/// reservoir (a uniform sample of the stream) and mines partners among more neighbours
/// ([`config_with_memory`]); with `E = u8` each value takes one byte, quantised over
/// the span of the model's normalisation ([`quant_of`]).
pub struct Engine<
    const D: usize,
    const W: usize,
    P,
    S: Store,
    const CAPS: u32 = LEARN,
    const MEM: usize = CAP,
    E = f32,
    L = Learning<D, MEM, <S as Store>::Buf, E>,
> {
    model: Model<f32, P>,
    /// CRC of the current weights' blob; `None` after training changed them.
    crc: Option<u32>,
    loader: WeightLoader,
    staging: Option<Staging<S::Buf>>,
    /// The training under way ([`Learning`]; `()` in an engine that trains nothing).
    learn: L,
    /// The trainer's stored values are `E` (a field of `L`).
    _stored: PhantomData<E>,
    work: [f32; W],
    store: S,
    max_frame: usize,
}

impl<const D: usize, const W: usize, P, S, const CAPS: u32, const MEM: usize, E, L>
    Engine<D, W, P, S, CAPS, MEM, E, L>
where
    P: Params,
    S: Store,
    E: Stored<f32>,
    L: Learns<D, MEM, S::Buf, E>,
{
    const TRAINS: bool = CAPS & CAP_TRAIN != 0;
    /// Whether `Segment` and `Encode` link the code that runs samples two at a time:
    /// only when `W` may hold two workspaces (one is at least `4 D`: the input and the
    /// widest layer, twice), as in an image with flash to spare; one at a time otherwise.
    const PAIRS: bool = W >= 8 * D;

    /// An engine running `model` (all of its parameters), whose blob has CRC `crc`;
    /// `max_frame` is the longest request frame the caller receives. `Internal` when the
    /// model does not have `D` inputs or needs more than `W` scalars of workspace. A
    /// model without its decoder (inference parameters only) adapts by online k-means;
    /// training with a gradient optimiser is then refused (`Train`).
    pub fn new(
        model: Model<f32, P>,
        crc: u32,
        store: S,
        max_frame: usize,
    ) -> Result<Self, ErrorCode> {
        Self::check(&model)?;
        Ok(Self::fresh(model, crc, store, max_frame))
    }

    /// [`Engine::new`] into `slot` (e.g. a `static`), which it returns: the engine is
    /// written where it stays, not built on the stack and moved (it holds the
    /// workspace, the tracker and the spawner's memory: several KiB a small device
    /// cannot have twice). Errors as [`Engine::new`]'s (`slot` unchanged).
    pub fn new_in(
        slot: &mut Option<Self>,
        model: Model<f32, P>,
        crc: u32,
        store: S,
        max_frame: usize,
    ) -> Result<&mut Self, ErrorCode> {
        Self::check(&model)?;
        Ok(slot.insert(Self::fresh(model, crc, store, max_frame)))
    }

    /// The engine of a checked model, before any request. Always inlined, so that
    /// [`Engine::new_in`] writes it into its slot.
    #[inline(always)]
    fn fresh(model: Model<f32, P>, crc: u32, store: S, max_frame: usize) -> Self {
        const {
            assert!(
                !Self::TRAINS || L::KEEPS,
                "an engine that serves `TrainBatch` keeps a training state (`L` = `Learning`)"
            )
        };
        let shape = *model.shape();
        Engine {
            loader: WeightLoader::new(shape),
            model,
            crc: Some(crc),
            staging: None,
            learn: L::new(),
            _stored: PhantomData,
            work: [0.0; W],
            store,
            max_frame,
        }
    }

    /// What [`Engine::new`] checks of its model.
    fn check(model: &Model<f32, P>) -> Result<(), ErrorCode> {
        let shape = model.shape();
        if shape.input != D || model.work_len() > W {
            return Err(ErrorCode::Internal);
        }
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &Model<f32, P> {
        &self.model
    }

    /// Bytes of the training under way (`None` when none): the parameter vector, the
    /// trainer's state ([`OnlineTrainer::state_bytes`](crate::train::trainer::OnlineTrainer::state_bytes): gradient, workspace, optimiser
    /// moments, memory of past samples), or for online k-means the centres' counts.
    pub fn train_ram(&self) -> Option<usize> {
        let params = 4 * self.model.params().len();
        let l = self.learn.state_ref()?;
        if let Some(t) = l.trainer.as_ref() {
            return Some(params + t.state_bytes());
        }
        l.kmeans
            .as_ref()
            .map(|k| params + core::mem::size_of_val(k))
    }

    /// The store (buffers and checkpoint slots), giving up the engine: what survives a
    /// reset, for a new engine to boot on.
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
    /// their responses (one per sample; [`Engine::handle_each`] gives them all).
    pub fn handle(&mut self, req: &Request) -> Response {
        let mut last = Response::Ack;
        self.handle_each(req, &mut |r| last = r.clone());
        last
    }

    /// The answers to one received frame (the message bytes after COBS decoding, or why
    /// there are none), each handed to `emit`: the request's responses, or one error
    /// response for a frame that is not a request.
    pub fn respond(&mut self, frame: Result<&[u8], FrameError>, emit: &mut dyn FnMut(&Response)) {
        match frame.and_then(borrowed::parse) {
            Ok(req) => self.respond_to(&req, emit),
            Err(e) => emit_error(emit, e.into()),
        }
    }

    /// [`Engine::handle_each`] of a request read in place: the samples of `Segment`,
    /// `Encode` and `TrainBatch` are copied into one buffer on the stack (`MAX_SAMPLE`
    /// values, the most `parse` accepts); a weight chunk is answered from the frame.
    /// Not inlined: the buffer takes stack only while a request is answered.
    #[inline(never)]
    fn respond_to(&mut self, req: &borrowed::RequestRef<'_>, emit: &mut dyn FnMut(&Response)) {
        use borrowed::RequestRef as R;
        let mut buf = [0.0f32; MAX_SAMPLE];
        let job = match *req {
            R::Info => Job::Info,
            R::Segment(s) => Job::Segment(read_samples(&s, &mut buf)),
            R::Encode(s) => Job::Encode(read_samples(&s, &mut buf)),
            R::TrainBatch {
                samples,
                steps,
                ref settings,
            } => Job::Train(read_samples(&samples, &mut buf), steps, settings.as_ref()),
            R::LoadWeights {
                offset,
                bytes,
                last,
            } => Job::Load(offset, bytes, last),
            R::ReadWeights { offset, count } => Job::Read(offset, count),
            R::Checkpoint => Job::Checkpoint,
        };
        self.dispatch(job, emit)
    }

    /// Answers one request, handing each response to `emit`: one, or one per sample for
    /// `Segment` and `Encode` (the core's `protocol::answer`, two samples at a time
    /// when `W` holds two workspaces).
    pub fn handle_each(&mut self, req: &Request, emit: &mut dyn FnMut(&Response)) {
        let job = match req {
            Request::Info => Job::Info,
            Request::Segment { sample } => Job::Segment(sample),
            Request::Encode { sample } => Job::Encode(sample),
            Request::TrainBatch {
                samples,
                steps,
                settings,
            } => Job::Train(samples, *steps, settings.as_ref()),
            Request::LoadWeights {
                offset,
                bytes,
                last,
            } => Job::Load(*offset, bytes, *last),
            Request::ReadWeights { offset, count } => Job::Read(*offset, *count),
            Request::Checkpoint => Job::Checkpoint,
        };
        self.dispatch(job, emit)
    }

    /// The one dispatch, whatever the request was read from: each kind of request
    /// answered in a function of its own (not inlined), so that the stack of a request
    /// is that of its own answer, not the sum of every answer's (each holds a
    /// `Response` of about 1.3 KiB): what lets the engine serve in the micro:bit's
    /// 16 KiB. A request outside `CAPS` is answered `Unsupported`.
    fn dispatch(&mut self, job: Job<'_>, emit: &mut dyn FnMut(&Response)) {
        match job {
            Job::Segment(x) if CAPS & CAP_SEGMENT != 0 => self.segment(x, emit),
            Job::Encode(x) if CAPS & CAP_ENCODE != 0 => self.encode(x, emit),
            Job::Train(x, steps, settings) if Self::TRAINS => {
                self.train_and_answer(x, steps, settings, emit)
            }
            Job::Read(offset, count) if CAPS & CAP_READ != 0 => {
                self.read_weights(offset, count, emit)
            }
            Job::Segment(_) | Job::Encode(_) | Job::Train(..) | Job::Read(..) => {
                emit_error(emit, ErrorCode::Unsupported)
            }
            Job::Info | Job::Load(..) | Job::Checkpoint => self.answer(job, emit),
        }
    }

    #[inline(never)]
    fn segment(&mut self, sample: &[f32], emit: &mut dyn FnMut(&Response)) {
        let mut out = Response::Ack;
        let (m, w) = (&self.model, &mut self.work);
        if Self::PAIRS {
            answer_segment::<_, true>(m, sample, w, &mut out, emit)
        } else {
            answer_segment::<_, false>(m, sample, w, &mut out, emit)
        }
    }

    #[inline(never)]
    fn encode(&mut self, sample: &[f32], emit: &mut dyn FnMut(&Response)) {
        let mut out = Response::Ack;
        let (m, w) = (&self.model, &mut self.work);
        if Self::PAIRS {
            answer_encode::<_, true>(m, sample, w, &mut out, emit)
        } else {
            answer_encode::<_, false>(m, sample, w, &mut out, emit)
        }
    }

    #[inline(never)]
    fn train_and_answer(
        &mut self,
        samples: &[f32],
        steps: u16,
        settings: Option<&TrainSettings>,
        emit: &mut dyn FnMut(&Response),
    ) {
        let r = self.train(samples, steps, settings, emit);
        emit_small(emit, r.unwrap_or_else(Small::Error));
    }

    /// Answers the requests whose answer is [`Small`].
    #[inline(never)]
    fn answer(&mut self, job: Job<'_>, emit: &mut dyn FnMut(&Response)) {
        let r = self.try_handle(job);
        emit_small(emit, r.unwrap_or_else(Small::Error));
    }

    /// Answers `ReadWeights`. Not inlined: its `Response` (about 1.3 KiB) takes stack only
    /// while it is sent.
    #[inline(never)]
    fn read_weights(&self, offset: u32, count: u16, emit: &mut dyn FnMut(&Response)) {
        let start = offset as usize;
        let n = usize::from(count);
        let p = self.model.params();
        let values = start
            .checked_add(n)
            .filter(|&end| n <= MAX_VALUES && end <= p.len())
            .and_then(|end| p.get(start..end));
        match values.map(heapless::Vec::from_slice) {
            Some(Ok(values)) => emit(&Response::Weights { offset, values }),
            Some(Err(_)) => emit_small(emit, Small::Error(ErrorCode::Internal)),
            None => emit_small(emit, Small::Error(ErrorCode::OutOfRange)),
        }
    }

    fn try_handle(&mut self, job: Job<'_>) -> Result<Small, ErrorCode> {
        match job {
            Job::Info => {
                let shape = *self.model.shape();
                let held = self.model.params().len();
                let crc = self.crc();
                let r = self.store.resources();
                let mut info = DeviceInfo::new(&shape, held, crc, self.max_frame, CAPS);
                info.flash_used = r.flash;
                info.ram_static = r.ram;
                info.stack_peak = r.stack;
                Ok(Small::Info(info))
            }
            Job::Load(offset, bytes, last) if CAPS & CAP_LOAD != 0 => {
                let r = self.load(offset, bytes, last);
                if r.is_err() || last {
                    self.staging = None;
                }
                let r = r?;
                // An engine that does not train keeps loaded weights at once, as an
                // inference device writes a load into flash.
                if !Self::TRAINS && last && self.store.checkpoints().is_some() {
                    self.checkpoint()?;
                }
                Ok(r)
            }
            Job::Checkpoint if CAPS & CAP_CHECKPOINT != 0 => {
                self.checkpoint()?;
                Ok(Small::Checkpointed(self.crc()))
            }
            // `Segment`, `Encode`, `TrainBatch` and `ReadWeights` are answered by their
            // own functions; a load or checkpoint outside this engine's capabilities.
            _ => Err(ErrorCode::Unsupported),
        }
    }

    /// Saves a checkpoint: the weights, and what the training under way needs to resume
    /// (a trainer's optimiser state, step counts and record; online k-means' counts,
    /// spawner and tracker).
    #[inline(never)]
    fn checkpoint(&mut self) -> Result<(), ErrorCode> {
        // Weights in flash slots were saved as they were loaded, and such an engine
        // trains nothing: there is nothing more to save.
        if self.model.storage_mut().slots().is_some() {
            return Ok(());
        }
        if self.store.checkpoints().is_none() {
            return Err(ErrorCode::Unsupported);
        }
        if let Some(l) = self.learn.state() {
            if let Some(t) = l.trainer.as_ref() {
                let prefix = resume_prefix(l.settings.as_ref(), &mut l.rng, true)?;
                let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
                return c
                    .save_trainer_after(&self.model, t, &prefix)
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
                let prefix = resume_prefix(l.settings.as_ref(), &mut l.rng, false)?;
                let layout = weights.with_extra(Self::KMEANS_EXTRA);
                let tracker = l.tracker.as_ref();
                let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
                return c
                    .save_with_extra(
                        &layout,
                        self.model.params(),
                        zeros.as_ref(),
                        0,
                        counts.updates(),
                        &mut |out| {
                            out(&prefix);
                            counts.put(out);
                            spawner.put(out);
                            match tracker {
                                Some(t) => t.put(out),
                                None => Tracker::<D>::new(1.0).put(out),
                            }
                        },
                    )
                    .map(|_| ())
                    .map_err(|_| ErrorCode::Storage);
            }
        }
        let c = self.store.checkpoints().ok_or(ErrorCode::Unsupported)?;
        c.save(&weights, self.model.params(), zeros.as_ref(), 0, 0)
            .map(|_| ())
            .map_err(|_| ErrorCode::Storage)
    }

    /// Extra bytes of a checkpoint of online k-means: the settings prefix, the centres'
    /// counts, the spawner's memory and the normalisation tracker.
    const KMEANS_EXTRA: usize =
        RESUME_PREFIX + CentreCounts::LEN + Spawner::LEN + Tracker::<D>::LEN;

    /// At boot: the newest valid checkpoint of any layout, if there is one. One saved
    /// while training resumes that training where it stopped: a trainer (its settings,
    /// generator seed, optimiser state, step count and memory of past samples; a
    /// `SegmenterAndNormalisation` trainer restarts its normalisation tracker from the
    /// saved normalisation) or online k-means (its settings, the centres' counts, the
    /// spawner's memory of novelty and the tracker). The next `TrainBatch` without
    /// settings goes on as if there had been no reset. Any other checkpoint puts its
    /// weights back. Returns the checkpoint's sequence number.
    pub fn restore(&mut self) -> Result<Option<u32>, ErrorCode> {
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

    /// Resumes the online k-means of the newest checkpoint of `layout` (weights,
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
        let Some((settings, _)) = read_resume_prefix(&prefix) else {
            return Ok(false);
        };
        if self.start(&settings).is_err() || self.learn.state().is_none_or(|l| l.kmeans.is_none()) {
            self.learn.stop();
            return Ok(false);
        }
        let (_, mut zeros) = self
            .store
            .take(0, layout.state())
            .ok_or(ErrorCode::Internal)?;
        let Engine {
            store,
            model,
            learn,
            ..
        } = self;
        let Learning {
            kmeans, tracker, ..
        } = learn.state().ok_or(ErrorCode::Internal)?;
        let (counts, spawner) = kmeans.as_mut().ok_or(ErrorCode::Internal)?;
        let params = writable(model)?;
        let c = store.checkpoints().ok_or(ErrorCode::Internal)?;
        let (nc, ns) = (CentreCounts::LEN, Spawner::LEN);
        let loaded = c
            .load_with_extra(layout, params, zeros.as_mut(), &mut |at, b| match at
                .checked_sub(RESUME_PREFIX)
            {
                Some(i) if i < nc => counts.set(i, b),
                Some(i) if i < nc + ns => spawner.set(i - nc, b),
                Some(i) => {
                    if let Some(t) = tracker.as_mut() {
                        t.set(i - nc - ns, b);
                    }
                }
                None => {}
            })
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
            .restore_trainer_after(&mut trainable(&mut self.model)?, t, RESUME_PREFIX)
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

    /// One `LoadWeights` chunk. A chunk at offset 0 starts a new blob (and ends any
    /// training): its values go into a store buffer, or into the flash slot not in use
    /// when the weights live in flash; the weights change only once the last chunk has
    /// checked out (length, header, finiteness, CRC). Any error abandons the load.
    fn load(&mut self, offset: u32, bytes: &[u8], last: bool) -> Result<Small, ErrorCode> {
        let n = self.model.params().len();
        if offset == 0 {
            // New weights end any training: its buffers become the staging area.
            self.learn.stop();
            self.staging = None;
            let staging = match self.model.storage_mut().slots() {
                Some(slots) => {
                    slots.begin()?;
                    Staging::Slot
                }
                None => Staging::Ram(self.store.take(n, 0).ok_or(ErrorCode::Internal)?.0),
            };
            self.staging = Some(staging);
        }
        let Some(staging) = self.staging.as_mut() else {
            self.loader.reset();
            return Err(ErrorCode::LoadOrder { expected: 0 });
        };
        // Values past the parameters the model holds (the decoder of an inference-only
        // model) are checked and counted in the CRC, not kept.
        match staging {
            Staging::Ram(buf) => {
                let stage = buf.as_mut();
                self.loader.feed(offset, bytes, |i, v| {
                    if let Some(s) = stage.get_mut(i) {
                        *s = v;
                    }
                    Ok(())
                })?;
            }
            Staging::Slot => {
                let slots = slots_of(&mut self.model)?;
                self.loader.feed(offset, bytes, |i, v| slots.put(i, v))?;
            }
        }
        if !last {
            return Ok(Small::Ack);
        }
        let crc = self.loader.finish()?;
        match staging {
            Staging::Ram(buf) => {
                let stage = buf.as_ref().get(..n).ok_or(ErrorCode::Internal)?;
                let params = writable(&mut self.model)?;
                // Equal lengths (checked, so that no panic path is linked in).
                if params.len() != stage.len() {
                    return Err(ErrorCode::Internal);
                }
                params.copy_from_slice(stage);
            }
            Staging::Slot => {
                let slots = slots_of(&mut self.model)?;
                slots.commit(crc)?;
            }
        }
        self.crc = Some(crc);
        Ok(Small::Loaded(crc))
    }

    /// Starts a training with new settings: a trainer (or the centres' counts of online
    /// k-means) and, for `SegmenterAndNormalisation`, a normalisation tracker.
    ///
    /// Not inlined: the new state is built on its stack (the spawner's memory, the
    /// tracker, the trainer), which a training step then does not keep.
    #[inline(never)]
    fn start(&mut self, s: &TrainSettings) -> Result<(), ErrorCode> {
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
            if !self.model.has_decoder() {
                return Err(ErrorCode::Train);
            }
            let mut cfg = config_with_memory(s, MEM).ok_or(ErrorCode::Train)?;
            cfg.quant = quant_of::<D, P>(&self.model).ok_or(ErrorCode::Train)?;
            let shape = *self.model.shape();
            let (scratch, optim) = self
                .store
                .take(
                    TrainConfig::<f32>::storage_len(
                        &shape,
                        cfg.scope,
                        cfg.batch,
                        cfg.init_rows(MEM),
                    ),
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
            let seg = self
                .model
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
            // discovered cluster, nor bring back one that was merged away.
            let due = centres.updates() % CHECKPOINT_EVERY == 0;
            if (spawned || retired || due) && self.store.checkpoints().is_some() {
                self.checkpoint()?;
            }
        }
        let updates = self
            .learn
            .state_ref()
            .and_then(|l| l.kmeans.as_ref())
            .map_or(0, |(c, _)| c.updates());
        let seg = self.model.segmenter_params();
        let used = (0..shape.clusters)
            .filter(|&k| in_use(&shape, seg, k))
            .count();
        Ok(Small::Trained {
            buffered: used as u32,
            steps: updates,
            loss: if n > 0 { novelty / n as f32 } else { f32::NAN },
        })
    }

    fn train(
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
            match t.step(&mut trainable(&mut self.model)?, &mut l.rng) {
                Ok(r) => {
                    loss = r.loss.total;
                    self.crc = None;
                    if r.steps % CHECKPOINT_EVERY == 0 {
                        if let Some(c) = self.store.checkpoints() {
                            let prefix = resume_prefix(l.settings.as_ref(), &mut l.rng, false)?;
                            c.save_trainer_after(&self.model, t, &prefix)
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
                            &mut trainable(&mut self.model)?,
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
fn resume_prefix(
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

/// The parameters of `model`, writable: `Train` when they live in flash (an engine
/// over flash slots answers, loads and keeps weights, and trains nothing).
fn writable<P: Params>(model: &mut Model<f32, P>) -> Result<&mut [f32], ErrorCode> {
    model.storage_mut().writable().ok_or(ErrorCode::Train)
}

/// The flash slots `model`'s weights live in (`Internal` for weights in RAM: a load is
/// staged in a slot only when they have slots).
fn slots_of<P: Params>(model: &mut Model<f32, P>) -> Result<&mut dyn Slots, ErrorCode> {
    model.storage_mut().slots().ok_or(ErrorCode::Internal)
}

/// `model` over writable parameters, for a trainer (`Train` as [`writable`]).
fn trainable<P: Params>(model: &mut Model<f32, P>) -> Result<Model<f32, &mut [f32]>, ErrorCode> {
    model.view(|p| p.writable()).ok_or(ErrorCode::Train)
}

/// The input normalisation in `params`: offsets and scales, `D` each.
fn normalisation_mut<const D: usize>(
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
/// up to [`CAP`] a ring whose partners are drawn among the 3 nearest; beyond, a
/// reservoir with partners among the [`SCRATCH_NEIGHBOURS`] nearest, and for Full
/// scope (learning from scratch) [`SCRATCH_WARMUP_STEPS`] of warm-up, the centres
/// initialised on [`SCRATCH_INIT_SAMPLES`] of the memory by 50 Lloyd iterations.
/// `None` when out of range.
pub fn config_with_memory(s: &TrainSettings, mem: usize) -> Option<TrainConfig<f32>> {
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
        cfg.memory = Policy::Reservoir;
        cfg.consistency = Consistency::Neighbours(SCRATCH_NEIGHBOURS);
        cfg.kmeans_iters = 50;
        cfg.init_samples = SCRATCH_INIT_SAMPLES;
        if cfg.scope == Scope::Full {
            cfg.warmup_steps = SCRATCH_WARMUP_STEPS;
        }
    }
    Some(cfg)
}

/// CRC-32 of the weight blob of `params` (header, values, as [`crate::store::blob::write`]
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

/// The values of `s` in `buf` (`parse` accepts at most `MAX_SAMPLE`).
fn read_samples<'b>(s: &borrowed::F32s<'_>, buf: &'b mut [f32; MAX_SAMPLE]) -> &'b [f32] {
    let n = buf.iter_mut().zip(s.iter()).map(|(o, v)| *o = v).count();
    buf.get(..n).unwrap_or_default()
}

/// A request as [`Engine::dispatch`] takes it: the samples as values, whether the
/// request was read in place from a frame or given owned.
enum Job<'a> {
    Segment(&'a [f32]),
    Encode(&'a [f32]),
    /// Samples, steps, new settings.
    Train(&'a [f32], u16, Option<&'a TrainSettings>),
    Info,
    /// A weight chunk: offset, bytes, last.
    Load(u32, &'a [u8], bool),
    /// Offset, count.
    Read(u32, u16),
    Checkpoint,
}

/// The engine's answers without a vector, a few bytes each: the `Response` (about 1.3
/// KiB, the protocol's vectors have fixed capacities) is built only to be sent
/// ([`emit_small`]), so the functions that compute an answer keep none on their stack.
#[derive(Clone, Copy, Debug)]
enum Small {
    Info(DeviceInfo),
    Ack,
    Loaded(u32),
    Checkpointed(u32),
    Trained {
        buffered: u32,
        steps: u32,
        loss: f32,
    },
    Error(ErrorCode),
}

/// Sends `s` as its `Response`. Not inlined: the `Response` takes stack only while it
/// is sent.
#[inline(never)]
fn emit_small(emit: &mut dyn FnMut(&Response), s: Small) {
    emit(&match s {
        Small::Info(info) => Response::Info(info),
        Small::Ack => Response::Ack,
        Small::Loaded(weights_crc) => Response::Loaded { weights_crc },
        Small::Checkpointed(weights_crc) => Response::Checkpointed { weights_crc },
        Small::Trained {
            buffered,
            steps,
            loss,
        } => Response::Trained {
            buffered,
            steps,
            loss,
        },
        Small::Error(e) => Response::Error(e),
    });
}

/// Emits `Response::Error(code)`.
fn emit_error(emit: &mut dyn FnMut(&Response), code: ErrorCode) {
    emit_small(emit, Small::Error(code));
}

/// Emits the event of a centre's change: `slot` changed by `change` at sample `i` of the
/// request, `used` slots in use after it. Not inlined: its `Response` (about 1.3 KiB)
/// takes stack only while it is sent.
#[inline(never)]
fn emit_centre(
    emit: &mut dyn FnMut(&Response),
    slot: usize,
    change: CentreChange,
    i: usize,
    used: usize,
) {
    emit(&Response::Centre {
        slot: saturate_u8(slot),
        change,
        sample: u16::try_from(i).unwrap_or(u16::MAX),
        in_use: saturate_u8(used),
    });
}

/// `v` as a `u8`, 255 if larger (slot counts are at most [`MAX_ONLINE_CLUSTERS`]).
fn saturate_u8(v: usize) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}
