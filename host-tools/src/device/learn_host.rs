//! The core's device engine ([`hvae::device`], the firmware's `learn` program) on the
//! host: heap buffers capped at the device's sizes, flash in memory, and a simulated
//! learning device served by the core's server over in-memory pipes.

use hvae::device::{
    adapt_slot_len, blank_slots, checkpoint_slot_len_with, optim_len, scratch_checkpoint_slot_len,
    scratch_len_with, scratch_optim_len, Engine, HeapStore, SlotsOnly, Store, Transport, ADAPT,
    ADAPT_MEM, CAP, LEARN, SCRATCH_MEM,
};
use hvae::protocol::{Request, Response};
use hvae::protocol::{MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use hvae::Shape;
use hvae::VecModel;
use hvae_devkit::Link;
use std::io::{BufReader, Read, Write};

/// Inputs of the models the host reference runs: the firmware's (the digits' 8x8 pixels).
/// The engine's input size is a compile-time constant, as on the device.
pub const INPUTS: usize = 64;
/// Workspace of the host engine (the device's is two `Shape::work_len`s; a workspace
/// of two or more makes `Segment` requests go two samples at a time, with the same
/// results).
pub const WORK: usize = 8192;

/// NOR flash in memory, with the firmware's geometry (1 KiB pages, word writes): a
/// write can only clear bits, as on the real part.
pub type RamFlash = hvae::store::RamFlash<1024>;

/// Heap buffers no larger than the device's static ones, and checkpoint slots in a
/// [`RamFlash`] of the device's size.
pub type HostStore = HeapStore<1024>;

/// A store sized as the `learn` program's for `shape`.
pub fn learn_store(shape: &Shape) -> Result<HostStore, String> {
    let slot = checkpoint_slot_len_with::<RamFlash>(shape, CAP, 4);
    store_with_memory(shape, CAP, slot, optim_len(shape))
}

/// A store sized as the `learn_scratch` program's for `shape`: a trainer that remembers
/// [`SCRATCH_MEM`] samples, and the state of the scratch optimiser
/// (`hvae::device::SCRATCH_OPTIM`).
pub fn scratch_store(shape: &Shape) -> Result<HostStore, String> {
    let slot = scratch_checkpoint_slot_len::<RamFlash>(shape);
    store_with_memory(shape, SCRATCH_MEM, slot, scratch_optim_len(shape))
}

/// A store sized for `shape`, a trainer that remembers `mem` samples, checkpoint slots
/// of `slot` bytes and `optim` scalars of optimiser state.
fn store_with_memory(
    shape: &Shape,
    mem: usize,
    slot: usize,
    optim: usize,
) -> Result<HostStore, String> {
    HostStore::new(scratch_len_with(shape, mem), optim, slot)
        .map_err(|e| format!("checkpoint slots: {e:?}"))
}

/// The learning engine on the host.
pub type HostLearner = Engine<INPUTS, WORK, VecModel, HostStore>;

/// The scratch engine: the learning engine whose trainer remembers [`SCRATCH_MEM`]
/// samples stored as bytes, kept by `hvae::device::SCRATCH_POLICY` (the `scratch`
/// scenario, docs/device.md#scenarios).
pub type ScratchLearner = Engine<INPUTS, WORK, VecModel, HostStore, LEARN, SCRATCH_MEM, u8>;

/// The scratch engine for `model` (weights CRC `crc`), or why the host cannot run it.
pub fn scratch_learner(model: VecModel<f32>, crc: u32) -> Result<ScratchLearner, String> {
    let shape = *model.shape();
    if shape.input != INPUTS || shape.work_len() > WORK || !model.has_decoder() {
        return Err(format!(
            "the scratch engine runs models of {INPUTS} inputs with their decoder (this one \
             has {} inputs)",
            shape.input
        ));
    }
    let store = scratch_store(&shape)?;
    Engine::new(model, crc, store, MAX_REQUEST_FRAME)
        .map_err(|e| format!("the scratch engine refuses the model: {e}"))
}

/// The store of the `adapt` program: no training buffers, and checkpoint slots of its
/// size ([`adapt_slot_len`]) in a [`RamFlash`].
pub type AdaptStore = SlotsOnly<RamFlash>;

/// A store sized as the `adapt` program's for `shape`.
pub fn adapt_store(shape: &Shape) -> Result<AdaptStore, String> {
    let slot = adapt_slot_len::<RamFlash, INPUTS>(shape);
    let checkpoints = blank_slots(slot).map_err(|e| format!("checkpoint slots: {e:?}"))?;
    Ok(SlotsOnly::new(Some(checkpoints)))
}

/// The adapting engine (the `adapt` program's, for parts without the RAM of a trainer):
/// the inference parameters alone, online k-means of the centres, no buffers, what it
/// adapts checkpointed in the `adapt` program's slots.
pub type AdaptLearner = Engine<INPUTS, WORK, VecModel, AdaptStore, ADAPT, ADAPT_MEM, u8>;

/// The adapting engine for `model`'s inference parameters (its decoder is dropped, as
/// the `adapt` program holds none; `crc` is the whole blob's), with blank checkpoint
/// slots, or why the host cannot run it.
pub fn adapt_learner(model: VecModel<f32>, crc: u32) -> Result<AdaptLearner, String> {
    let store = adapt_store(model.shape())?;
    adapt_learner_on(model, crc, store).map(|(e, _)| e)
}

/// [`adapt_learner`] booted on `store` (e.g. the slots of an engine before a reset, from
/// [`Engine::into_store`]): the newest checkpoint of what it adapted on these weights is
/// restored, as the `adapt` program does at boot. The engine and the checkpoint's
/// sequence number (`None`: nothing restored).
pub fn adapt_learner_on(
    model: VecModel<f32>,
    crc: u32,
    store: AdaptStore,
) -> Result<(AdaptLearner, Option<u32>), String> {
    let shape = *model.shape();
    if shape.input != INPUTS || shape.work_len() > WORK {
        return Err(format!(
            "the adapting engine runs models of {INPUTS} inputs (this one has {})",
            shape.input
        ));
    }
    let prefix = model
        .params()
        .get(..shape.inference_param_len())
        .ok_or("the model lacks its inference parameters")?
        .to_vec();
    let model = VecModel::new(shape, prefix).map_err(|e| e.to_string())?;
    let mut e = Engine::new(model, crc, store, MAX_REQUEST_FRAME)
        .map_err(|e| format!("the adapting engine refuses the model: {e}"))?;
    let restored = e
        .restore()
        .map_err(|e| format!("the adapting engine's checkpoint: {e}"))?;
    Ok((e, restored))
}

/// Any engine on the host, as the reference of a device run.
pub enum HostEngine {
    /// The `learn` program's engine.
    Learn(Box<HostLearner>),
    /// The scratch engine.
    Scratch(Box<ScratchLearner>),
    /// The `adapt` program's engine.
    Adapt(Box<AdaptLearner>),
}

impl HostEngine {
    /// Answers one request, handing each response to `emit` ([`Engine::handle_each`]).
    pub fn handle_each(&mut self, req: &Request, emit: &mut dyn FnMut(&Response)) {
        match self {
            HostEngine::Learn(e) => e.handle_each(req, emit),
            HostEngine::Scratch(e) => e.handle_each(req, emit),
            HostEngine::Adapt(e) => e.handle_each(req, emit),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &[f32] {
        match self {
            HostEngine::Learn(e) => e.model().params(),
            HostEngine::Scratch(e) => e.model().params(),
            HostEngine::Adapt(e) => e.model().params(),
        }
    }

    /// Bytes of the training under way ([`Engine::train_ram`]).
    pub fn train_ram(&self) -> Option<usize> {
        match self {
            HostEngine::Learn(e) => e.train_ram(),
            HostEngine::Scratch(e) => e.train_ram(),
            HostEngine::Adapt(e) => e.train_ram(),
        }
    }
}

/// The learning engine for `model` (weights CRC `crc`), or why the host cannot run it.
pub fn host_learner(model: VecModel<f32>, crc: u32) -> Result<HostLearner, String> {
    let shape = *model.shape();
    if shape.input != INPUTS || shape.work_len() > WORK || !model.has_decoder() {
        return Err(format!(
            "the host reference of the learn engine runs models of {INPUTS} inputs with their \
             decoder (this one has {} inputs)",
            shape.input
        ));
    }
    let store = learn_store(&shape)?;
    Engine::new(model, crc, store, MAX_REQUEST_FRAME)
        .map_err(|e| format!("the learn engine refuses the model: {e}"))
}

/// In-memory pipes as the core server's transport: the device's end of a [`Link`].
pub struct Pipes<R, W> {
    rx: BufReader<R>,
    tx: W,
}

impl<R: Read, W: Write> Pipes<R, W> {
    /// The device's end: requests from `rx`, responses to `tx`.
    pub fn new(rx: R, tx: W) -> Self {
        Pipes {
            rx: BufReader::new(rx),
            tx,
        }
    }
}

impl<R: Read, W: Write> Transport for Pipes<R, W> {
    type Error = std::io::Error;
    fn read(&mut self) -> std::io::Result<u8> {
        let mut b = [0u8; 1];
        self.rx.read_exact(&mut b)?;
        Ok(b[0])
    }
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tx.write_all(bytes)?;
        self.tx.flush()
    }
}

/// A simulated learning device: `learner` served in a thread over in-memory pipes (the
/// core's server, [`Engine::serve`]), until the link is dropped.
pub fn spawn<
    S: Store<Buf: Send> + Send + 'static,
    const CAPS: u32,
    const MEM: usize,
    E: hvae::train::samples::Stored<f32> + Send + 'static,
>(
    mut learner: Engine<INPUTS, WORK, VecModel, S, CAPS, MEM, E>,
) -> std::io::Result<Link> {
    let (req_rx, req_tx) = std::io::pipe()?;
    let (resp_rx, resp_tx) = std::io::pipe()?;
    std::thread::spawn(move || {
        let mut pipes = Pipes::new(req_rx, resp_tx);
        learner.serve::<_, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME>(&mut pipes)
    });
    Ok(Link::new("simulated learning device", resp_rx, req_tx))
}
