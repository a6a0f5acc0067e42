//! The engine: one request dispatch for every device that serves the protocol.

use super::learning::Learning;
use super::{Params, Served, Slots, Store, CAP, LEARN};
use crate::infer::model::Model;
use crate::protocol::answer::{answer, Ask};
use crate::protocol::borrowed;
use crate::protocol::{
    blob_header, BlobFormat, CentreChange, DeviceInfo, ErrorCode, FrameError, Request, Response,
    TrainSettings, WeightLoader, CAP_CHECKPOINT, CAP_ENCODE, CAP_LOAD, CAP_READ, CAP_SEGMENT,
    CAP_TRAIN, MAX_SAMPLE, MAX_VALUES,
};
use crate::shape::Shape;
use core::marker::PhantomData;

/// Where the values of a load under way go: a store buffer, copied over the weights
/// when the blob checks out (weights in RAM), or the flash slot not in use (weights in
/// flash: [`Served::slots`]).
pub(super) enum Staging<B> {
    Ram(B),
    Slot,
}

/// The engine: the model `M` it serves ([`Served`]: an `f32` [`Model`] whose parameters
/// are a [`Params`], in RAM, all of them when it trains, or in flash slots; or the int8
/// model in flash slots, [`Int8`](super::Int8)), a workspace of `W` scalars (two model workspaces
/// answer samples two at a time), `D` inputs, buffers and checkpoint slots from the
/// store `S`, and the requests it serves in `CAPS` ([`LEARN`](super::LEARN),
/// [`INFER`](super::INFER), [`ADAPT`](super::ADAPT)): a request outside them is
/// answered [`ErrorCode::Unsupported`], and its code is not linked.
///
/// The training state is `L` ([`Learning`], or `()` in an engine that serves no
/// `TrainBatch`: no RAM for a trainer, a tracker or online k-means). The trainer
/// remembers `MEM` past samples, each value stored as `E`: by default the [`CAP`] most
/// recent as `f32` (a ring). A larger memory (`MEM > CAP`) keeps the samples by
/// [`SCRATCH_POLICY`](super::SCRATCH_POLICY) and mines partners among more neighbours
/// ([`config_with_memory`](super::config_with_memory)); with `E = u8` each value takes
/// one byte, quantised over the span of the model's normalisation
/// ([`quant_of`](super::quant_of)).
pub struct Engine<
    const D: usize,
    const W: usize,
    M: Served,
    S: Store,
    const CAPS: u32 = LEARN,
    const MEM: usize = CAP,
    E = f32,
    L = Learning<D, MEM, <S as Store>::Buf, E>,
> {
    pub(super) model: M,
    /// CRC of the current weights' blob; `None` after training changed them.
    pub(super) crc: Option<u32>,
    /// CRC of the blob the engine was built with or last loaded: what the values of a
    /// checkpoint of an inference-only model were adapted on
    /// ([`Layout::adapted`](crate::store::checkpoint::Layout::adapted)'s identity).
    pub(super) deployed: u32,
    pub(super) loader: WeightLoader<<M as Served>::Blob>,
    pub(super) staging: Option<Staging<S::Buf>>,
    /// The training under way ([`Learning`]; `()` in an engine that trains nothing).
    pub(super) learn: L,
    /// The trainer's stored values are `E` (a field of `L`).
    pub(super) _stored: PhantomData<E>,
    pub(super) work: [f32; W],
    pub(super) store: S,
    pub(super) max_frame: usize,
}

engine_impl! {
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
        model: M,
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
        model: M,
        crc: u32,
        store: S,
        max_frame: usize,
    ) -> Result<&mut Self, ErrorCode> {
        Self::check(&model)?;
        Ok(slot.insert(Self::fresh(model, crc, store, max_frame)))
    }

    /// The engine of a checked model, before any request. Always inlined, so that
    /// [`Engine::new_in`] writes it into its slot (its training state is built by a
    /// call of its own, [`Learns::new`](super::Learns::new), returned into its field).
    #[inline(always)]
    fn fresh(model: M, crc: u32, store: S, max_frame: usize) -> Self {
        const {
            assert!(
                !Self::TRAINS || L::KEEPS,
                "an engine that serves `TrainBatch` keeps a training state (`L` = `Learning`)"
            )
        };
        let shape = *model.shape();
        Engine {
            loader: WeightLoader::of_format(shape),
            model,
            crc: Some(crc),
            deployed: crc,
            staging: None,
            learn: L::new(),
            _stored: PhantomData,
            work: [0.0; W],
            store,
            max_frame,
        }
    }

    /// What [`Engine::new`] checks of its model.
    fn check(model: &M) -> Result<(), ErrorCode> {
        let shape = model.shape();
        if shape.input != D || model.work_len() > W {
            return Err(ErrorCode::Internal);
        }
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Bytes of the training under way (`None` when none): the parameter vector, the
    /// trainer's state ([`OnlineTrainer::state_bytes`](crate::train::trainer::OnlineTrainer::state_bytes): gradient, workspace, optimiser
    /// moments, memory of past samples), or for online k-means the centres' counts.
    pub fn train_ram(&self) -> Option<usize> {
        let params = 4 * self.model.f32()?.params().len();
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
                let c = self
                    .model
                    .f32()
                    .map_or(0, |m| blob_crc(m.shape(), m.params()));
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
            Job::Segment(x) if CAPS & CAP_SEGMENT != 0 => {
                self.answer_samples(Ask::Segment, x, emit)
            }
            Job::Encode(x) if CAPS & CAP_ENCODE != 0 => self.answer_samples(Ask::Encode, x, emit),
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

    /// Answers a `Segment` or `Encode` request ([`answer`]).
    #[inline(never)]
    fn answer_samples(&mut self, ask: Ask, samples: &[f32], emit: &mut dyn FnMut(&Response)) {
        let mut out = Response::Ack;
        let (m, w) = (self.model.answers(), &mut self.work);
        if Self::PAIRS {
            answer::<_, true>(ask, m, samples, w, &mut out, emit)
        } else {
            answer::<_, false>(ask, m, samples, w, &mut out, emit)
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
        let p = self.model.f32().map(|m| m.params()).unwrap_or_default();
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
                let held = self.model.held();
                let crc = self.crc();
                let r = self.store.resources();
                let mut info = DeviceInfo::new(&shape, held, crc, self.max_frame, CAPS);
                info.blob = <M::Blob as BlobFormat>::VERSION;
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
                    self.checkpoint(true)?;
                }
                Ok(r)
            }
            Job::Checkpoint if CAPS & CAP_CHECKPOINT != 0 => {
                self.checkpoint(true)?;
                Ok(Small::Checkpointed(self.crc()))
            }
            // `Segment`, `Encode`, `TrainBatch` and `ReadWeights` are answered by their
            // own functions; a load or checkpoint outside this engine's capabilities.
            _ => Err(ErrorCode::Unsupported),
        }
    }

    /// One `LoadWeights` chunk. A chunk at offset 0 starts a new blob (and ends any
    /// training): its values go into a store buffer, or into the flash slot not in use
    /// when the weights live in flash; the weights change only once the last chunk has
    /// checked out (length, header, finiteness, CRC). Any error abandons the load.
    fn load(&mut self, offset: u32, bytes: &[u8], last: bool) -> Result<Small, ErrorCode> {
        if offset == 0 {
            // New weights end any training: its buffers become the staging area.
            self.learn.stop();
            self.staging = None;
            let staging = match self.model.slots() {
                Some(slots) => {
                    slots.begin()?;
                    Staging::Slot
                }
                None => {
                    // Int8 weights without slots have nowhere to load into.
                    let m = self.model.f32().ok_or(ErrorCode::Unsupported)?;
                    let n = m.params().len();
                    Staging::Ram(self.store.take(n, 0).ok_or(ErrorCode::Internal)?.0)
                }
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
                        *s = f32::from_bits(M::Blob::word(v));
                    }
                    Ok(())
                })?;
            }
            Staging::Slot => {
                let slots = slots_of(&mut self.model)?;
                self.loader
                    .feed(offset, bytes, |i, v| slots.put(i, M::Blob::word(v)))?;
            }
        }
        if !last {
            return Ok(Small::Ack);
        }
        let crc = self.loader.finish()?;
        match staging {
            Staging::Ram(buf) => {
                let params = writable(&mut self.model)?;
                let stage = buf.as_ref().get(..params.len()).ok_or(ErrorCode::Internal)?;
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
        self.deployed = crc;
        Ok(Small::Loaded(crc))
    }
}

/// The `f32` model of `model` (`Train` for the int8 model: what needs `f32` parameters
/// is training, and an engine that serves the int8 model trains nothing).
pub(super) fn net<M: Served>(model: &M) -> Result<&Model<f32, M::Params>, ErrorCode> {
    model.f32().ok_or(ErrorCode::Train)
}

/// [`net`], writable.
pub(super) fn net_mut<M: Served>(model: &mut M) -> Result<&mut Model<f32, M::Params>, ErrorCode> {
    model.f32_mut().ok_or(ErrorCode::Train)
}

/// The parameters of `model`, writable: `Train` when they live in flash (an engine
/// over flash slots answers, loads and keeps weights, and trains nothing).
pub(super) fn writable<M: Served>(model: &mut M) -> Result<&mut [f32], ErrorCode> {
    net_mut(model)?
        .storage_mut()
        .writable()
        .ok_or(ErrorCode::Train)
}

/// The flash slots `model`'s weights live in (`Internal` for weights in RAM: a load is
/// staged in a slot only when they have slots).
fn slots_of<M: Served>(model: &mut M) -> Result<&mut dyn Slots, ErrorCode> {
    model.slots().ok_or(ErrorCode::Internal)
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
pub(super) enum Small {
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
pub(super) fn emit_centre(
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
pub(super) fn saturate_u8(v: usize) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}
