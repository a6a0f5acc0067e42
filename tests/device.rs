//! `hvae::device`: the engine's dispatch with each set of capabilities (an inference
//! engine refuses `TrainBatch` and keeps loaded weights across a reboot; a learning one
//! trains and keeps them only on `Checkpoint`), the server over an in-memory transport,
//! and the `Internal` error frame the server falls back on; the int8 model on the same
//! engine (its answers, loads of int8 blobs into flash slots, the blobs it refuses).

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
use hvae::device::{
    checkpoint_slot_len, checkpoint_slot_len_with, int8_words, optim_len, scratch_len,
    scratch_len_with, Engine, HeapStore, Int8, Int8Weights, Learns, Params, Served, Slots,
    SlotsOnly, Transport, CAP, INFER, INFER_INT8, INTERNAL_ERROR_FRAME, LEARN,
};
use hvae::infer::quant::{
    calibration_len, float_len, int_len, quantize, weight_len, Calibration, QuantModel,
};
use hvae::protocol::answer::{answer, Ask};
use hvae::protocol::{
    encode, int8_blob_header, CentreChange, DeviceInfo, ErrorCode, FrameDecoder, Request, Response,
    TrainOptimiser, TrainScope, TrainSettings, CAP_TRAIN, MAX_CHUNK, MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
};
use hvae::store::blob::crc32;
use hvae::store::RamFlash;
use hvae::Checkpoints;
use hvae::Model;
use hvae::Shape;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const S: Shape = Shape::new(12, &[16], 4, 5);
const D: usize = 12;
const W: usize = 2048;

/// NOR flash in memory: 1 KiB pages, word writes that only clear bits.
type Ram = RamFlash<1024>;

/// Heap buffers no larger than a device's, and two checkpoint slots.
type Heap = HeapStore<1024>;

/// The sizes of a device's `learn` program.
fn heap() -> Heap {
    assert_eq!(scratch_len_with(&S, CAP), scratch_len(&S));
    let heap = heap_with_memory(CAP, 4);
    assert_eq!(
        heap.checkpoints.slot_len(),
        checkpoint_slot_len::<Ram>(&S) as u32
    );
    heap
}

/// Sized for an engine that remembers `mem` samples of `value_bytes` per value.
fn heap_with_memory(mem: usize, value_bytes: usize) -> Heap {
    let slot = checkpoint_slot_len_with::<Ram>(&S, mem, value_bytes);
    Heap::new(scratch_len_with(&S, mem), optim_len(&S), slot).unwrap()
}

fn model(seed: u64) -> Model<f32, Vec<f32>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut m = Model::new(S, vec![0.0f32; S.param_len()]).unwrap();
    m.init(&mut rng);
    m
}

fn blob(m: &Model<f32, Vec<f32>>) -> Vec<u8> {
    let mut bytes = vec![0u8; hvae::store::blob::blob_len(&S)];
    let n = hvae::store::blob::write(&S, m.params(), &mut bytes).unwrap();
    bytes.truncate(n);
    bytes
}

type Infer = Engine<D, W, Model<f32, Vec<f32>>, Heap, INFER>;
type Learn = Engine<D, W, Model<f32, Vec<f32>>, Heap, LEARN>;

fn engine<const CAPS: u32>(
    m: Model<f32, Vec<f32>>,
    store: Heap,
) -> Engine<D, W, Model<f32, Vec<f32>>, Heap, CAPS> {
    let crc = hvae::device::blob_crc(&S, m.params());
    Engine::new(m, crc, store, MAX_REQUEST_FRAME).unwrap()
}

/// Loads `bytes` in chunks; the last response, or the first that is not `Ack` (the
/// device abandons the load there).
fn load<M: Served, const CAPS: u32, L: Learns<D, CAP, Vec<f32>, f32>>(
    e: &mut Engine<D, W, M, Heap, CAPS, CAP, f32, L>,
    bytes: &[u8],
) -> Response {
    let mut last = Response::Ack;
    let n = bytes.len().div_ceil(MAX_CHUNK);
    for (i, c) in bytes.chunks(MAX_CHUNK).enumerate() {
        last = e.handle(&Request::LoadWeights {
            offset: (i * MAX_CHUNK) as u32,
            bytes: heapless::Vec::from_slice(c).unwrap(),
            last: i + 1 == n,
        });
        if last != Response::Ack {
            break;
        }
    }
    last
}

fn settings() -> TrainSettings {
    TrainSettings {
        scope: TrainScope::SegmenterOnly,
        optimiser: TrainOptimiser::Adam,
        lr: 1e-3,
        batch: 4,
    }
}

/// `n` standard normal values from `seed`.
fn normals(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| hvae::dist::rng::standard_normal::<f32, _>(&mut rng))
        .collect()
}

/// A `TrainBatch` of the samples `xs`.
fn train_on(xs: &[f32], steps: u16, settings: Option<TrainSettings>) -> Request {
    Request::TrainBatch {
        samples: heapless::Vec::from_slice(xs).unwrap(),
        steps,
        settings,
    }
}

fn train_request(steps: u16) -> Request {
    train_on(&normals(3, 8 * D), steps, Some(settings()))
}

/// An engine on `model(1)` that has loaded `model(2)`'s blob, and that blob's CRC.
fn loaded_engine<const CAPS: u32>() -> (Engine<D, W, Model<f32, Vec<f32>>, Heap, CAPS>, u32) {
    let new = model(2);
    let crc = hvae::device::blob_crc(&S, new.params());
    let mut e = engine(model(1), heap());
    assert_eq!(
        load(&mut e, &blob(&new)),
        Response::Loaded { weights_crc: crc }
    );
    (e, crc)
}

#[test]
fn capabilities_choose_the_requests_served() {
    let mut infer: Infer = engine(model(1), heap());
    let Response::Info(info) = infer.handle(&Request::Info) else {
        panic!("Info")
    };
    assert_eq!(info.capabilities, INFER);
    assert_eq!(info.capabilities & CAP_TRAIN, 0);
    assert_eq!(
        infer.handle(&train_request(1)),
        Response::Error(ErrorCode::Unsupported)
    );
    let mut learn: Learn = engine(model(1), heap());
    let Response::Info(info) = learn.handle(&Request::Info) else {
        panic!("Info")
    };
    assert_eq!(info.capabilities, LEARN);
    assert!(matches!(
        learn.handle(&train_request(2)),
        Response::Trained { .. }
    ));
}

#[test]
fn an_inference_engine_keeps_loaded_weights_across_a_reboot() {
    let (e, crc) = loaded_engine::<INFER>();
    // Reboot on the first weights: the checkpoint written by the load comes back.
    let mut e: Infer = engine(model(1), e.into_store());
    assert_eq!(e.restore().unwrap(), Some(1));
    assert_eq!(e.crc(), crc);
    assert_eq!(e.model().params(), model(2).params());
}

/// Two slots of values "in flash", the one in use and the one a load fills: values kept
/// as they arrive over a blank slot, the slot in use switched only on commit, as a
/// device keeps them.
struct TwoSlots<T> {
    slots: [Vec<T>; 2],
    running: usize,
    filling: Option<usize>,
    commits: Vec<u32>,
    /// An erased value.
    blank: T,
    /// A value from a word of the blob.
    from_word: fn(u32) -> T,
}

impl<T: Copy> TwoSlots<T> {
    /// `running` in use, the other slot of its length blank.
    fn new(running: Vec<T>, blank: T, from_word: fn(u32) -> T) -> Self {
        TwoSlots {
            slots: [running.clone(), vec![blank; running.len()]],
            running: 0,
            filling: None,
            commits: Vec::new(),
            blank,
            from_word,
        }
    }
    /// [`Slots::begin`]: the other slot erased, to fill.
    fn begin(&mut self) -> Result<(), ErrorCode> {
        let other = 1 - self.running;
        self.slots[other].fill(self.blank);
        self.filling = Some(other);
        Ok(())
    }
    /// [`Slots::put`]: one word of the load (past the slot's end, dropped).
    fn put(&mut self, index: usize, word: u32) -> Result<(), ErrorCode> {
        let slot = self.filling.ok_or(ErrorCode::Storage)?;
        if let Some(v) = self.slots[slot].get_mut(index) {
            *v = (self.from_word)(word);
        }
        Ok(())
    }
    /// The slot the load filled (the load is over either way).
    fn filled(&mut self) -> Result<usize, ErrorCode> {
        self.filling.take().ok_or(ErrorCode::Storage)
    }
    /// `slot` in use, with the weights of CRC `crc`.
    fn switch(&mut self, slot: usize, crc: u32) {
        self.running = slot;
        self.commits.push(crc);
    }
}

/// Weights "in flash": two slots of inference parameters, as the firmware's `cluster`
/// holds them.
type FlashSlots = TwoSlots<f32>;

impl AsRef<[f32]> for FlashSlots {
    fn as_ref(&self) -> &[f32] {
        &self.slots[self.running]
    }
}

impl Params for FlashSlots {
    fn writable(&mut self) -> Option<&mut [f32]> {
        None
    }
    fn slots(&mut self) -> Option<&mut dyn Slots> {
        Some(self)
    }
}

impl Slots for FlashSlots {
    fn begin(&mut self) -> Result<(), ErrorCode> {
        TwoSlots::begin(self)
    }
    fn put(&mut self, index: usize, word: u32) -> Result<(), ErrorCode> {
        TwoSlots::put(self, index, word)
    }
    fn commit(&mut self, crc: u32) -> Result<(), ErrorCode> {
        let slot = self.filled()?;
        self.switch(slot, crc);
        Ok(())
    }
}

type InferFlash = Engine<D, W, Model<f32, FlashSlots>, Heap, INFER, CAP, f32, ()>;

fn in_flash(m: &Model<f32, Vec<f32>>) -> InferFlash {
    let n = S.inference_param_len();
    let params = FlashSlots::new(m.params()[..n].to_vec(), f32::NAN, f32::from_bits);
    let crc = hvae::device::blob_crc(&S, m.params());
    Engine::new(
        Model::new(S, params).unwrap(),
        crc,
        heap(),
        MAX_REQUEST_FRAME,
    )
    .unwrap()
}

#[test]
fn an_engine_over_flash_slots_loads_into_the_other_slot() {
    let (first, new) = (model(1), model(2));
    let crc = hvae::device::blob_crc(&S, new.params());
    let n = S.inference_param_len();
    let mut e = in_flash(&first);
    let Response::Info(info) = e.handle(&Request::Info) else {
        panic!("Info")
    };
    assert_eq!(info.params_held as usize, n);

    // A blob with a bad CRC: refused, the slot in use unchanged, nothing committed.
    let mut bad = blob(&new);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        load(&mut e, &bad),
        Response::Error(ErrorCode::BadCrc { .. })
    ));
    assert_eq!(e.model().params(), &first.params()[..n]);
    assert!(e.model().storage().commits.is_empty());

    // A good blob: the other slot, the inference prefix only, committed with its CRC.
    assert_eq!(
        load(&mut e, &blob(&new)),
        Response::Loaded { weights_crc: crc }
    );
    assert_eq!(e.model().storage().running, 1);
    assert_eq!(e.model().params(), &new.params()[..n]);
    assert_eq!(e.model().storage().commits, [crc]);
    // Already in flash: a checkpoint has nothing to write, and says which weights.
    assert_eq!(
        e.handle(&Request::Checkpoint),
        Response::Checkpointed { weights_crc: crc }
    );
    assert_eq!(e.crc(), crc);
    // Answers come from the new weights, as the model in RAM gives them.
    let x: Vec<f32> = (0..D).map(|i| i as f32 * 0.1 - 0.5).collect();
    let Response::Segmented { label, .. } = e.handle(&Request::Segment {
        sample: heapless::Vec::from_slice(&x).unwrap(),
    }) else {
        panic!("Segment")
    };
    let mut work = vec![0.0; S.work_len()];
    assert_eq!(label as usize, new.segment(&x, &mut work).unwrap().label);
    // It trains nothing.
    assert_eq!(
        e.handle(&train_request(1)),
        Response::Error(ErrorCode::Unsupported)
    );
}

#[test]
fn a_learning_engine_keeps_loaded_weights_on_checkpoint_only() {
    let (e, crc) = loaded_engine::<LEARN>();
    let mut e: Learn = engine(model(1), e.into_store());
    assert_eq!(e.restore().unwrap(), None);
    assert_eq!(
        load(&mut e, &blob(&model(2))),
        Response::Loaded { weights_crc: crc }
    );
    assert_eq!(
        e.handle(&Request::Checkpoint),
        Response::Checkpointed { weights_crc: crc }
    );
    let mut e: Learn = engine(model(1), e.into_store());
    assert_eq!(e.restore().unwrap(), Some(1));
    assert_eq!(e.crc(), crc);
}

/// Requests in, responses out, in memory.
struct Bytes {
    rx: std::vec::IntoIter<u8>,
    tx: Vec<u8>,
}

impl Transport for Bytes {
    type Error = ();
    fn read(&mut self) -> Result<u8, ()> {
        self.rx.next().ok_or(())
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.tx.extend_from_slice(bytes);
        Ok(())
    }
}

#[test]
fn the_server_answers_each_frame_as_the_engine_does() {
    let xs = normals(4, 3 * D);
    let requests = [
        Request::Info,
        Request::Segment {
            sample: heapless::Vec::from_slice(&xs).unwrap(),
        },
        Request::ReadWeights {
            offset: 0,
            count: 10,
        },
        train_request(3),
    ];
    let mut wire = Vec::new();
    let mut buf = vec![0u8; MAX_REQUEST_FRAME];
    for r in &requests {
        wire.extend_from_slice(encode(r, &mut buf).unwrap());
    }
    // Garbage: one error answer, then the server is back in step.
    wire.extend_from_slice(&[0x05, 0xFF, 0x13, 0x00]);
    let mut t = Bytes {
        rx: wire.into_iter(),
        tx: Vec::new(),
    };
    let mut served: Learn = engine(model(1), heap());
    served.serve::<_, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME>(&mut t);
    let mut got = Vec::new();
    let mut rx = FrameDecoder::<MAX_RESPONSE_FRAME>::new();
    for &b in &t.tx {
        if let Some(r) = rx.push::<Response>(b) {
            got.push(r.unwrap());
        }
    }
    let mut want = Vec::new();
    let mut direct: Learn = engine(model(1), heap());
    for r in &requests {
        direct.handle_each(r, &mut |x| want.push(x.clone()));
    }
    assert_eq!(got.len(), want.len() + 1);
    assert_eq!(got[..want.len()], want[..]);
    assert!(matches!(got.last(), Some(Response::Error(_))));
}

#[test]
fn the_internal_error_frame_is_the_encoded_response() {
    let mut buf = [0u8; 16];
    let f = encode(&Response::Error(ErrorCode::Internal), &mut buf).unwrap();
    assert_eq!(*f, INTERNAL_ERROR_FRAME);
}

/// `SegmenterAndNormalisation`: the model's normalisation after a request is a
/// `Tracker`'s, started from the model's own and fed the request's samples; the encoder
/// stays as it was; `SegmenterOnly` leaves the normalisation alone; a non-finite sample
/// changes nothing.
#[test]
fn the_normalisation_scope_tracks_the_stream_and_nothing_else_moves() {
    use hvae::device::NORM_DECAY;
    use hvae::infer::normalise::Tracker;
    let m = model(1);
    let before = m.params().to_vec();
    // A shifted sensor: every feature reads 3 x + 2.
    let xs: Vec<f32> = normals(9, 8 * D).iter().map(|x| 3.0 * x + 2.0).collect();
    let request = |scope, samples: &[f32]| {
        train_on(
            samples,
            2,
            Some(TrainSettings {
                scope,
                ..settings()
            }),
        )
    };
    let mut e: Learn = engine(m, heap());
    let r = e.handle(&request(TrainScope::SegmenterAndNormalisation, &xs));
    assert!(matches!(r, Response::Trained { steps: 2, .. }), "{r:?}");
    let mut t =
        Tracker::<D>::from_normalisation(&before[..D], &before[D..2 * D], NORM_DECAY).unwrap();
    for x in xs.chunks_exact(D) {
        t.push(x).unwrap();
    }
    let (mut o, mut s) = ([0.0f32; D], [0.0f32; D]);
    t.normalisation(&mut o, &mut s).unwrap();
    let after = e.model().params().to_vec();
    assert_eq!(&after[..D], &o[..]);
    assert_eq!(&after[D..2 * D], &s[..]);
    // It moved towards the stream's mean of 2.
    for f in 0..D {
        assert!(after[f] > before[f], "feature {f}");
    }
    let seg = S.segmenter_offset();
    assert_eq!(&after[2 * D..seg], &before[2 * D..seg], "the encoder moved");
    // A non-finite sample: refused, nothing changes.
    let mut bad = xs.clone();
    bad[5] = f32::NAN;
    let mut bad_req = request(TrainScope::SegmenterAndNormalisation, &bad);
    if let Request::TrainBatch { settings, .. } = &mut bad_req {
        *settings = None;
    }
    assert_eq!(
        e.handle(&bad_req),
        Response::Error(ErrorCode::NonFiniteInput)
    );
    assert_eq!(e.model().params(), &after[..]);
    // SegmenterOnly leaves the normalisation as it is.
    let mut e: Learn = engine(model(1), heap());
    e.handle(&request(TrainScope::SegmenterOnly, &xs));
    assert_eq!(&e.model().params()[..2 * D], &before[..2 * D]);
}

/// Every response of one `TrainBatch` of `xs` with `settings`: its events, then its
/// answer.
fn train_batch(e: &mut Learn, xs: &[f32], settings: TrainSettings) -> Vec<Response> {
    let mut answers = Vec::new();
    e.handle_each(&train_on(xs, 0, Some(settings)), &mut |r| {
        answers.push(r.clone())
    });
    answers
}

/// Online k-means on the engine: each sample, segmented by the model as it stands, moves
/// the centre of its label by the core's rule; nothing but the centres moves; the
/// gradient scopes refuse it.
#[test]
fn online_k_means_moves_each_samples_centre_by_the_core_rule() {
    use hvae::train::centres::{in_use, CentreCounts, Tidied};
    let m = model(1);
    let mut reference = model(1);
    let xs = normals(11, 8 * D);
    let km = settings_with(
        TrainScope::SegmenterOnly,
        TrainOptimiser::OnlineKMeans {
            memory: 5,
            spawn_above: 2.0,
            spawn_window: 128,
            spawn_count: 16,
        },
    );
    let mut e: Learn = engine(m, heap());
    let mut answers = train_batch(&mut e, &xs, km);
    let Some(Response::Trained { steps, loss, .. }) = answers.pop() else {
        panic!("{answers:?}")
    };
    assert_eq!(steps, 8);
    // The reference: the same rules applied by hand (the update, then the engine's
    // retire-and-merge rule), with the events the engine must have sent.
    let mut counts = CentreCounts::new(5.0);
    let mut work = vec![0.0f32; S.work_len()];
    let mut novelty = 0.0f32;
    let mut events = Vec::new();
    let (so, l) = (S.segmenter_offset(), S.segmenter_len());
    for (i, x) in xs.chunks_exact(D).enumerate() {
        let seg = reference.segment(x, &mut work).unwrap();
        novelty += seg.novelty();
        let (label, mu) = (seg.label, seg.mu.to_vec());
        let p = &mut reference.params_mut()[so..so + l];
        counts.update(&S, p, &mu, label).unwrap();
        if let Some(t) = counts.tidy(&S, p, label, &hvae::device::TIDY).unwrap() {
            let (slot, change) = match t {
                Tidied::Merged { from, into } => (from as u8, CentreChange::MergedInto(into as u8)),
                Tidied::Retired { slot } => (slot as u8, CentreChange::Starved),
            };
            let in_use = (0..S.clusters).filter(|&k| in_use(&S, p, k)).count() as u8;
            events.push(Response::Centre {
                slot,
                change,
                sample: i as u16,
                in_use,
            });
        }
    }
    // The random model's centres lie close together: some merge.
    assert!(!events.is_empty());
    assert_eq!(answers, events);
    assert_eq!(loss, novelty / 8.0);
    assert_eq!(e.model().params(), reference.params());
    assert_ne!(reference.params(), model(1).params());
    // A gradient scope cannot take it.
    let mut e: Learn = engine(model(1), heap());
    let r = e.handle(&train_on(
        &xs,
        0,
        Some(TrainSettings {
            scope: TrainScope::EncoderAndSegmenter,
            ..km
        }),
    ));
    assert_eq!(r, Response::Error(ErrorCode::Train));
    assert_eq!(e.model().params(), model(1).params());
}

/// A spawned centre is in flash at once: after a "power cut" right after the request
/// that spawned it, the engine boots with the slot in use.
#[test]
fn a_spawned_centre_survives_a_reboot() {
    use hvae::train::centres::in_use;
    let m = spawnable(1);
    let so = S.segmenter_offset();
    let xs: Vec<f32> = normals(5, 12 * D).iter().map(|x| 3.0 * x).collect();
    let km = TrainSettings {
        scope: TrainScope::SegmenterOnly,
        ..spawning()
    };
    let mut e: Learn = engine(m.clone(), heap());
    let answers = train_batch(&mut e, &xs, km);
    // One event, at the second sample (2 novel of a window of 4), then the answer; the
    // one unused slot is taken, so nothing more spawns.
    let [Response::Centre {
        slot: 4,
        change: CentreChange::Spawned,
        sample: 1,
        in_use: 5,
    }, Response::Trained { buffered, .. }] = answers[..]
    else {
        panic!("{answers:?}")
    };
    assert_eq!(buffered, 5, "the answer counts the slots in use");
    let seg = |p: &[f32]| p[so..S.decoder_offset()].to_vec();
    assert!(in_use(&S, &seg(e.model().params()), 4));
    let trained = e.model().params().to_vec();
    // Power cut: a new engine on the same flash, booted on the compiled-in weights.
    let mut e: Learn = engine(m, e.into_store());
    assert!(e.restore().unwrap().is_some());
    assert!(in_use(&S, &seg(e.model().params()), 4));
    assert_eq!(seg(e.model().params()), seg(&trained));
}

/// Training requests of `n` samples each (the first carries `settings`).
fn resume_requests(settings: TrainSettings, n: usize) -> Vec<Request> {
    normals(21, 4 * n * D)
        .chunks_exact(n * D)
        .enumerate()
        .map(|(i, xs)| train_on(xs, 15, (i == 0).then_some(settings)))
        .collect()
}

/// Runs the first request and a `Checkpoint`, then — on the same engine, or after a
/// reset (a new engine on the compiled-in weights and the same flash, which restores
/// the checkpoint) — the rest; returns the rest's answers and the final weights.
fn run_with_reset<const MEM: usize, E: hvae::train::samples::Stored<f32>>(
    reqs: &[Request],
    store: Heap,
    reset: bool,
) -> (Vec<Response>, Vec<f32>) {
    let m = model(1);
    let crc = hvae::device::blob_crc(&S, m.params());
    let new = |m, store| {
        Engine::<D, W, Model<f32, Vec<f32>>, Heap, LEARN, MEM, E>::new(
            m,
            crc,
            store,
            MAX_REQUEST_FRAME,
        )
        .unwrap()
    };
    let mut e = new(m.clone(), store);
    assert!(matches!(e.handle(&reqs[0]), Response::Trained { .. }));
    assert!(matches!(
        e.handle(&Request::Checkpoint),
        Response::Checkpointed { .. }
    ));
    if reset {
        e = new(m, e.into_store());
        assert!(e.restore().unwrap().is_some());
    }
    let answers = reqs[1..].iter().map(|r| e.handle(r)).collect();
    (answers, e.model().params().to_vec())
}

/// Runs `reqs` without and with a reset (on a new `heap()` each): the two must answer
/// and end alike. The first answer after the reset, and the final weights' bits.
fn resumes_alike<const MEM: usize, E: hvae::train::samples::Stored<f32>>(
    reqs: &[Request],
    heap: fn() -> Heap,
) -> (Response, Vec<u32>) {
    let (a, pa) = run_with_reset::<MEM, E>(reqs, heap(), false);
    let (b, pb) = run_with_reset::<MEM, E>(reqs, heap(), true);
    assert_eq!(a, b);
    assert_eq!(bits(&pa), bits(&pb));
    (b[0].clone(), bits(&pb))
}

/// `reqs` with the second one carrying `settings` again: a training started afresh.
fn afresh(reqs: &[Request], settings: TrainSettings) -> Vec<Request> {
    let mut fresh = reqs.to_vec();
    if let Request::TrainBatch { settings: s, .. } = &mut fresh[1] {
        *s = Some(settings);
    }
    fresh
}

/// A reset between two requests changes nothing: the training resumes from its
/// checkpoint (settings, generator, optimiser state, step count, memory of past samples,
/// marginal, guard) and takes the very steps it would have taken without the reset —
/// the default engine (a ring of `f32`, Adam) and one that remembers a sliding sample
/// of bytes (SGD, Full scope from the first step, in its warm-up).
#[test]
fn a_training_resumes_bit_for_bit_after_a_reset() {
    let ring = settings_with(TrainScope::EncoderAndSegmenter, TrainOptimiser::Adam);
    let (first, _) = resumes_alike::<32, f32>(&resume_requests(ring, 8), heap);
    // The memory came back: 8 samples of the first request and 8 of the second.
    assert!(
        matches!(
            first,
            Response::Trained {
                buffered: 16,
                steps: 30,
                ..
            }
        ),
        "{first:?}"
    );
    let sgd = settings_with(TrainScope::Full, TrainOptimiser::Sgd { momentum: 0.9 });
    let reqs = resume_requests(sgd, 20);
    let bytes = || heap_with_memory(48, 1);
    let (first, pb) = resumes_alike::<48, u8>(&reqs, bytes);
    assert!(
        matches!(
            first,
            Response::Trained {
                buffered: 40,
                steps: 30,
                ..
            }
        ),
        "{first:?}"
    );
    // Without the checkpoint's memory the same requests train otherwise: a reset that
    // starts the training afresh (its first request carries the settings again).
    let (c, pc) = run_with_reset::<48, u8>(&afresh(&reqs, sgd), bytes(), true);
    assert_ne!(bits(&pc), pb);
    assert!(
        matches!(
            c[0],
            Response::Trained {
                buffered: 20,
                steps: 15,
                ..
            }
        ),
        "{c:?}"
    );
}

/// Online k-means resumes too: the centres' counts, the spawner's memory of novelty and
/// the normalisation tracker come back with the weights, and the samples after the
/// reset move the centres and the normalisation exactly as without it.
#[test]
fn online_k_means_resumes_bit_for_bit_after_a_reset() {
    let km = settings_with(
        TrainScope::SegmenterAndNormalisation,
        TrainOptimiser::OnlineKMeans {
            memory: 50,
            spawn_above: 0.5,
            spawn_window: 16,
            spawn_count: 6,
        },
    );
    let reqs = resume_requests(km, 8);
    let (first, pb) = resumes_alike::<32, f32>(&reqs, heap);
    // The counts came back: the updates go on from the first request's (8 samples, the
    // novel ones not counted).
    assert!(
        matches!(first, Response::Trained { steps: 9..=16, .. }),
        "{first:?}"
    );
    // The normalisation moved with the stream after the reset, as without it.
    assert_ne!(pb[..2 * D], bits(&model(1).params()[..2 * D]));
    // A reset that starts afresh (new counts, a tracker from the saved normalisation)
    // moves them otherwise.
    let (c, pc) = run_with_reset::<32, f32>(&afresh(&reqs, km), heap(), true);
    assert_ne!(bits(&pc), pb);
    assert!(
        matches!(c[0], Response::Trained { steps: 0..=8, .. }),
        "{c:?}"
    );
}

fn settings_with(scope: TrainScope, optimiser: TrainOptimiser) -> TrainSettings {
    TrainSettings {
        scope,
        optimiser,
        ..settings()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// --- The int8 model on the same engine, over in-memory flash slots ------------------

type Quant = QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>;

/// The int8 form of [`model`]`(seed)`, calibrated on normal samples.
fn quantised(seed: u64) -> Quant {
    let m = model(seed);
    let mut cal = Calibration::new(&S, vec![0f32; calibration_len(&S)]).unwrap();
    let mut work = vec![0f32; S.work_len()];
    for x in normals(seed ^ 0x51, 50 * D).chunks_exact(D) {
        cal.observe(&m, x, &mut work).unwrap();
    }
    let mut w = vec![0; weight_len(&S)];
    let mut i = vec![0; int_len(&S)];
    let mut f = vec![0.0; float_len(&S)];
    quantize(&m, &cal, &mut w, &mut i, &mut f).unwrap();
    QuantModel::new(S, w, i, f).unwrap()
}

fn int8_blob(q: &Quant) -> Vec<u8> {
    let mut out = vec![0u8; hvae::store::blob::int8_blob_len(q.shape())];
    let n = hvae::store::blob::write_int8(q, &mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

/// The int8 blob of a model of `shape` whose every value is 1.
fn ones_int8_blob(shape: Shape) -> Vec<u8> {
    let q = QuantModel::new(
        shape,
        vec![1i8; weight_len(&shape)],
        vec![1i32; int_len(&shape)],
        vec![1.0f32; float_len(&shape)],
    )
    .unwrap();
    int8_blob(&q)
}

/// Int8 weights in two flash slots of words, as a device keeps them: a load fills the
/// other slot, and a commit forms the model from its words (or refuses them).
struct Int8Slots {
    model: Quant,
    words: TwoSlots<u32>,
}

impl Int8Slots {
    fn new(q: Quant) -> Int8Slots {
        let n = int8_words(&S);
        Int8Slots {
            model: q,
            words: TwoSlots::new(vec![0; n], u32::MAX, |w| w),
        }
    }
}

impl Slots for Int8Slots {
    fn begin(&mut self) -> Result<(), ErrorCode> {
        self.words.begin()
    }
    fn put(&mut self, index: usize, word: u32) -> Result<(), ErrorCode> {
        self.words.put(index, word)
    }
    fn commit(&mut self, crc: u32) -> Result<(), ErrorCode> {
        let slot = self.words.filled()?;
        let words = &self.words.slots[slot];
        let nw = weight_len(&S);
        let (wq, rest) = words.split_at(nw.div_ceil(4));
        let (iq, fq) = rest.split_at(int_len(&S));
        let w: Vec<i8> = wq
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .take(nw)
            .map(|b| b as i8)
            .collect();
        let i: Vec<i32> = iq.iter().map(|&v| v as i32).collect();
        let f: Vec<f32> = fq.iter().map(|&v| f32::from_bits(v)).collect();
        self.model = QuantModel::new(S, w, i, f).map_err(ErrorCode::from)?;
        self.words.switch(slot, crc);
        Ok(())
    }
}

impl Int8Weights for Int8Slots {
    type W = Vec<i8>;
    type I = Vec<i32>;
    type F = Vec<f32>;
    fn model(&self) -> &Quant {
        &self.model
    }
    fn slots(&mut self) -> Option<&mut dyn Slots> {
        Some(self)
    }
}

type Int8Engine = Engine<D, W, Int8<Int8Slots>, Heap, INFER_INT8, CAP, f32, ()>;

fn int8_engine(q: Quant) -> Int8Engine {
    let crc = crc32(&int8_blob(&q)[..hvae::store::blob::int8_blob_len(&S) - 4]);
    Engine::new(Int8(Int8Slots::new(q)), crc, heap(), MAX_REQUEST_FRAME).unwrap()
}

/// Samples that tell two int8 models apart (and one with a NaN).
fn int8_samples() -> Vec<Vec<f32>> {
    let mut xs: Vec<Vec<f32>> = normals(77, 8 * D)
        .chunks_exact(D)
        .map(<[f32]>::to_vec)
        .collect();
    xs[3][5] = f32::NAN;
    xs
}

/// The answers of `q` itself (the core's answer functions): `Segment` then `Encode` of
/// each sample, one request each.
fn int8_answers_of(q: &Quant) -> Vec<Response> {
    let mut out = Vec::new();
    let mut work = vec![0.0f32; q.work_len()];
    for x in int8_samples() {
        let mut r = Response::Ack;
        for ask in [Ask::Segment, Ask::Encode] {
            answer::<_, false>(ask, q, &x, &mut work, &mut r, &mut |a| out.push(a.clone()));
        }
    }
    out
}

/// The engine's answers to the same requests.
fn int8_answers(e: &mut Int8Engine) -> Vec<Response> {
    let mut out = Vec::new();
    for x in int8_samples() {
        let sample = heapless::Vec::from_slice(&x).unwrap();
        e.handle_each(&Request::Segment { sample }, &mut |a| out.push(a.clone()));
        let sample = heapless::Vec::from_slice(&x).unwrap();
        e.handle_each(&Request::Encode { sample }, &mut |a| out.push(a.clone()));
    }
    out
}

fn info_of<M: Served, const CAPS: u32, L: Learns<D, CAP, Vec<f32>, f32>>(
    e: &mut Engine<D, W, M, Heap, CAPS, CAP, f32, L>,
) -> DeviceInfo {
    match e.handle(&Request::Info) {
        Response::Info(info) => info,
        r => panic!("Info: {r:?}"),
    }
}

#[test]
fn the_int8_blob_header_is_what_the_int8_blob_writer_writes() {
    for shape in [
        S,
        Shape::new(5, &[7, 3], 3, 2),
        Shape::new(64, &[32], 8, 10),
    ] {
        let out = ones_int8_blob(shape);
        assert_eq!(
            int8_blob_header(&shape)[..],
            out[..hvae::store::blob::HEADER_LEN_INT8]
        );
    }
}

#[test]
fn an_int8_engine_answers_as_its_model_and_reports_the_int8_blob() {
    let q = quantised(1);
    let crc = crc32(&int8_blob(&q)[..hvae::store::blob::int8_blob_len(&S) - 4]);
    let mut e = int8_engine(q.clone());
    let info = info_of(&mut e);
    assert_eq!(info.blob, hvae::store::blob::VERSION_INT8);
    assert_eq!(info.weights_crc, crc);
    assert_eq!(
        info.params_held as usize,
        weight_len(&S) + int_len(&S) + float_len(&S)
    );
    assert_eq!(info.capabilities, INFER_INT8);
    let want = int8_answers_of(&q);
    assert!(want.contains(&Response::Error(ErrorCode::NonFiniteInput)));
    assert!(want.iter().any(|r| matches!(r, Response::Segmented { .. })));
    assert_eq!(int8_answers(&mut e), want);
    // No f32 values to read back, no training, nothing to checkpoint.
    let refused = [
        Request::ReadWeights {
            offset: 0,
            count: 4,
        },
        Request::Checkpoint,
        Request::TrainBatch {
            samples: heapless::Vec::from_slice(&[0.5; D]).unwrap(),
            steps: 1,
            settings: None,
        },
    ];
    for r in refused {
        assert_eq!(
            e.handle(&r),
            Response::Error(ErrorCode::Unsupported),
            "{r:?}"
        );
    }
}

#[test]
fn an_int8_engine_loads_another_int8_blob_into_the_other_slot() {
    let (first, second) = (quantised(1), quantised(2));
    let mut e = int8_engine(first.clone());
    let before = int8_answers(&mut e);
    let bytes = int8_blob(&second);
    let crc = crc32(&bytes[..bytes.len() - 4]);
    assert_eq!(load(&mut e, &bytes), Response::Loaded { weights_crc: crc });
    assert_eq!(e.model().0.words.running, 1);
    assert_eq!(e.model().0.words.commits, [crc]);
    assert_eq!(e.model().0.model, second);
    assert_eq!(info_of(&mut e).weights_crc, crc);
    // The new model's exact answers, not the old one's.
    let after = int8_answers(&mut e);
    assert_eq!(after, int8_answers_of(&second));
    assert_ne!(after, before);
    // And back: the first slot again.
    let bytes = int8_blob(&first);
    assert!(matches!(load(&mut e, &bytes), Response::Loaded { .. }));
    assert_eq!(e.model().0.words.running, 0);
    assert_eq!(int8_answers(&mut e), before);
}

#[test]
fn an_int8_engine_refuses_bad_blobs_and_keeps_its_model() {
    let first = quantised(1);
    let second = quantised(2);
    let good = int8_blob(&second);
    let fix = |mut b: Vec<u8>| {
        let n = b.len() - 4;
        let crc = crc32(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let h = hvae::store::blob::HEADER_LEN_INT8;
    let at = |what: &str| -> usize {
        // Offsets of the first int and the first float after the header.
        let w = weight_len(&S).next_multiple_of(4);
        match what {
            "int" => h + w,
            _ => h + w + 4 * int_len(&S),
        }
    };
    let mut flipped = good.clone();
    flipped[h + 10] ^= 0x10;
    let mut weight_128 = good.clone();
    weight_128[h] = 0x80;
    let mut bad_shift = good.clone();
    // The first channel's shift (bias, multiplier, shift): 0 is out of range.
    let s = at("int") + 8;
    bad_shift[s..s + 4].copy_from_slice(&0i32.to_le_bytes());
    let mut nan = good.clone();
    let f = at("float");
    nan[f..f + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let other_bytes = ones_int8_blob(Shape::new(12, &[8], 4, 5));
    let n = good.len() - 4;
    let bad_crc = ErrorCode::BadCrc {
        stored: crc32(&good[..n]),
        computed: crc32(&flipped[..n]),
    };
    let cases = [
        ("a flipped bit", flipped, bad_crc),
        (
            "an f32 blob (version 1)",
            blob(&model(2)),
            ErrorCode::UnsupportedVersion(1),
        ),
        (
            "an int8 blob of another shape",
            other_bytes,
            ErrorCode::ShapeMismatch,
        ),
        ("a weight of -128", fix(weight_128), ErrorCode::OutOfRange),
        ("a shift of 0", fix(bad_shift), ErrorCode::OutOfRange),
        (
            "a NaN real",
            fix(nan),
            ErrorCode::NonFiniteWeight { index: 0 },
        ),
        (
            "cut short",
            good[..good.len() - 8].to_vec(),
            ErrorCode::LoadLength,
        ),
    ];
    let mut e = int8_engine(first.clone());
    let before = int8_answers(&mut e);
    let crc = info_of(&mut e).weights_crc;
    for (what, bytes, refused) in cases {
        assert_eq!(load(&mut e, &bytes), Response::Error(refused), "{what}");
        assert_eq!(e.model().0.words.running, 0, "{what}");
        assert!(e.model().0.words.commits.is_empty(), "{what}");
        assert_eq!(e.model().0.model, first, "{what}");
        assert_eq!(info_of(&mut e).weights_crc, crc, "{what}");
        assert_eq!(int8_answers(&mut e), before, "{what}");
    }
    // The good blob still loads after them.
    assert!(matches!(load(&mut e, &good), Response::Loaded { .. }));
    assert_eq!(int8_answers(&mut e), int8_answers_of(&second));
}

#[test]
fn int8_weights_without_slots_cannot_load() {
    let q = quantised(1);
    let crc = crc32(&int8_blob(&q)[..hvae::store::blob::int8_blob_len(&S) - 4]);
    let mut e: Engine<D, W, Int8<Quant>, Heap, INFER_INT8, CAP, f32, ()> =
        Engine::new(Int8(q.clone()), crc, heap(), MAX_REQUEST_FRAME).unwrap();
    assert_eq!(
        load(&mut e, &int8_blob(&quantised(2))),
        Response::Error(ErrorCode::Unsupported)
    );
    assert_eq!(e.model().0, q);
    assert_eq!(info_of(&mut e).weights_crc, crc);
}

// ---------------------------------------------------------------------------------------
// The adapting engine (`ADAPT`, the `adapt` program's): the inference parameters alone,
// online k-means, no buffers; what it adapts checkpointed with `Layout::adapted`.

/// NOR flash that loses power before operation `cut` (each sector erase and each word
/// write is one operation; the ones before it complete, it and every later one fail).
struct CutRam {
    ram: Ram,
    ops: u64,
    cut: Option<u64>,
}

impl CutRam {
    fn new(bytes: usize) -> CutRam {
        CutRam {
            ram: Ram::blank(bytes),
            ops: 0,
            cut: None,
        }
    }

    /// One more operation, or the power is gone.
    fn op(&mut self) -> Result<(), NorFlashErrorKind> {
        if self.cut.is_some_and(|c| self.ops >= c) {
            return Err(NorFlashErrorKind::Other);
        }
        self.ops += 1;
        Ok(())
    }
}

impl ErrorType for CutRam {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for CutRam {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        self.ram.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.ram.capacity()
    }
}

impl NorFlash for CutRam {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), NorFlashErrorKind> {
        for at in (from..to).step_by(Self::ERASE_SIZE) {
            self.op()?;
            self.ram.erase(at, at + Self::ERASE_SIZE as u32)?;
        }
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorFlashErrorKind> {
        for (i, w) in bytes.chunks(4).enumerate() {
            self.op()?;
            self.ram.write(offset + 4 * i as u32, w)?;
        }
        Ok(())
    }
}

/// The adapting engine's store: no buffers, the `adapt` program's checkpoint slots.
type AdaptSlots = SlotsOnly<CutRam>;

fn adapt_slots() -> AdaptSlots {
    let slot = hvae::device::adapt_slot_len::<CutRam, D>(&S);
    let c = Checkpoints::new(CutRam::new(2 * slot), 0, slot as u32).unwrap();
    SlotsOnly::new(Some(c))
}

/// `f` of the flash under the slots of `store`.
fn under_slots<R>(store: &mut AdaptSlots, f: impl FnOnce(&mut CutRam) -> R) -> R {
    let c = store.checkpoints.take().unwrap();
    let slot = c.slot_len();
    let mut flash = c.into_inner();
    let r = f(&mut flash);
    store.checkpoints = Some(Checkpoints::new(flash, 0, slot).unwrap());
    r
}

type Adapt = Engine<D, W, Model<f32, Vec<f32>>, AdaptSlots, { hvae::device::ADAPT }, 2, u8>;

/// A model with slot 4 unused (centre 0's copy, log-weight UNUSED): a spawn can take it.
fn spawnable(seed: u64) -> Model<f32, Vec<f32>> {
    use hvae::train::centres::UNUSED_LOG_WEIGHT;
    let mut m = model(seed);
    let (k, mm, so) = (S.clusters, S.latent, S.segmenter_offset());
    m.normalise_centres().unwrap();
    let c0: Vec<f32> = m.params()[so..so + mm].to_vec();
    m.params_mut()[so + 4 * mm..so + 5 * mm].copy_from_slice(&c0);
    m.params_mut()[so + k * mm + 1 + 4] = UNUSED_LOG_WEIGHT;
    m
}

/// The adapting engine on `m`'s inference parameters (the CRC of `m`'s whole blob, as
/// the `adapt` program is built), booted on `store`: what it restored.
fn adapt_on(m: &Model<f32, Vec<f32>>, store: AdaptSlots) -> (Adapt, Option<u32>) {
    let crc = hvae::device::blob_crc(&S, m.params());
    let infer = Model::new(S, m.params()[..S.inference_param_len()].to_vec()).unwrap();
    let mut e = Adapt::new(infer, crc, store, MAX_REQUEST_FRAME).unwrap();
    let restored = e.restore().unwrap();
    (e, restored)
}

/// Online k-means with the tracked normalisation; every sample novel (`spawn_above`
/// below any novelty), 2 of a window of 4 spawn.
fn spawning() -> TrainSettings {
    settings_with(
        TrainScope::SegmenterAndNormalisation,
        TrainOptimiser::OnlineKMeans {
            memory: 50,
            spawn_above: -1.0,
            spawn_window: 4,
            spawn_count: 2,
        },
    )
}

/// One `TrainBatch` of `n` samples from `seed` (with `settings` if given): its responses.
fn adapt_batch(
    e: &mut Adapt,
    n: usize,
    seed: u64,
    settings: Option<TrainSettings>,
) -> Vec<Response> {
    let xs: Vec<f32> = normals(seed, n * D).iter().map(|x| 2.0 * x + 1.0).collect();
    let mut out = Vec::new();
    e.handle_each(&train_on(&xs, 0, settings), &mut |r| out.push(r.clone()));
    out
}

/// What the adapting engine learned comes back after a reset: a `Checkpoint` request
/// saves the normalisation, the segmenter and online k-means' state (no parameter
/// vector, no buffer), a new engine on the compiled-in weights restores them, and the
/// requests after the reset answer and adapt exactly as without it (a spawn included).
#[test]
fn an_adapting_engine_resumes_bit_for_bit_after_a_reset() {
    let m = spawnable(1);
    let run = |reset: bool| {
        let (mut e, restored) = adapt_on(&m, adapt_slots());
        assert_eq!(restored, None, "blank flash");
        // One novel sample: no spawn yet.
        let first = adapt_batch(&mut e, 1, 31, Some(spawning()));
        assert!(
            matches!(first[..], [Response::Trained { buffered: 4, .. }]),
            "{first:?}"
        );
        let crc = e.crc();
        assert_eq!(
            e.handle(&Request::Checkpoint),
            Response::Checkpointed { weights_crc: crc }
        );
        let saved = e.model().params().to_vec();
        if reset {
            let (back, restored) = adapt_on(&m, e.into_store());
            e = back;
            assert_eq!(restored, Some(1));
            assert_eq!(bits(e.model().params()), bits(&saved));
            assert_eq!(e.crc(), crc);
        }
        // The next samples spawn into slot 4 and go on adapting.
        let rest: Vec<Response> = (0..3)
            .flat_map(|i| adapt_batch(&mut e, 3, 40 + i, None))
            .collect();
        (rest, e.model().params().to_vec())
    };
    let (a, pa) = run(false);
    let (b, pb) = run(true);
    assert_eq!(a, b);
    assert_eq!(bits(&pa), bits(&pb));
    assert!(
        b.iter().any(|r| matches!(
            r,
            Response::Centre {
                slot: 4,
                change: CentreChange::Spawned,
                ..
            }
        )),
        "{b:?}"
    );
    // The normalisation followed the stream, and the encoder stayed as deployed.
    assert_ne!(bits(&pb[..2 * D]), bits(&m.params()[..2 * D]));
    let so = S.segmenter_offset();
    assert_eq!(bits(&pb[2 * D..so]), bits(&m.params()[2 * D..so]));
}

/// A checkpoint adapted on other weights of the same shape, or of another shape, is
/// never restored (the weights stay as compiled in); a corrupt newest slot falls back
/// to the older one, bit for bit.
#[test]
fn an_adapted_checkpoint_restores_only_on_its_own_weights_and_survives_a_bad_slot() {
    let m = spawnable(1);
    let (mut e, _) = adapt_on(&m, adapt_slots());
    // No sample novel: only the requests save.
    let calm = settings_with(
        TrainScope::SegmenterAndNormalisation,
        TrainOptimiser::OnlineKMeans {
            memory: 50,
            spawn_above: 2.0,
            spawn_window: 4,
            spawn_count: 2,
        },
    );
    adapt_batch(&mut e, 3, 50, Some(calm));
    assert!(matches!(
        e.handle(&Request::Checkpoint),
        Response::Checkpointed { .. }
    ));
    let older = e.model().params().to_vec();
    adapt_batch(&mut e, 3, 51, None);
    assert!(matches!(
        e.handle(&Request::Checkpoint),
        Response::Checkpointed { .. }
    ));
    let newer = e.model().params().to_vec();
    assert_ne!(bits(&older), bits(&newer));
    let mut store = e.into_store();
    // Its own weights: the newest.
    let (e, restored) = adapt_on(&m, store);
    assert_eq!(restored, Some(2));
    assert_eq!(bits(e.model().params()), bits(&newer));
    store = e.into_store();
    // Other weights of the same shape: nothing restored.
    let other = spawnable(2);
    let (e, restored) = adapt_on(&other, store);
    assert_eq!(restored, None);
    assert_eq!(
        bits(e.model().params()),
        bits(&other.params()[..S.inference_param_len()])
    );
    store = e.into_store();
    // Another shape (one more cluster) on the same flash: nothing restored.
    {
        const S6: Shape = Shape::new(12, &[16], 4, 6);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut m6 = Model::new(S6, vec![0.0f32; S6.param_len()]).unwrap();
        m6.init(&mut rng);
        let crc = hvae::device::blob_crc(&S6, m.params());
        let infer = Model::new(S6, m6.params()[..S6.inference_param_len()].to_vec()).unwrap();
        let mut e6 = Adapt::new(infer, crc, store, MAX_REQUEST_FRAME).unwrap();
        assert_eq!(e6.restore().unwrap(), None);
        store = e6.into_store();
    }
    // The newest slot (seq 2, the second save: slot 1) damaged: the older comes back.
    let slot = hvae::device::adapt_slot_len::<CutRam, D>(&S);
    under_slots(&mut store, |f| f.ram.bytes_mut()[slot + 300] ^= 0x10);
    let (e, restored) = adapt_on(&m, store);
    assert_eq!(restored, Some(1));
    assert_eq!(bits(e.model().params()), bits(&older));
}

/// A spawn is never lost across a power cut: the save that keeps it is cut before each
/// of its flash operations in turn; at every reboot the engine restores either the
/// checkpoint before the spawn or the one with it (the cut before the last operation
/// leaves the old one, no cut the new one), and goes on from it exactly as an engine
/// booted on that checkpoint uncut: weights, counts, spawner and tracker as saved.
#[test]
fn a_spawn_is_never_lost_across_a_power_cut() {
    let m = spawnable(3);
    // Up to the checkpoint before the spawn: one novel sample, `Checkpoint`.
    let before = || {
        let (mut e, _) = adapt_on(&m, adapt_slots());
        adapt_batch(&mut e, 1, 60, Some(spawning()));
        assert!(matches!(
            e.handle(&Request::Checkpoint),
            Response::Checkpointed { .. }
        ));
        e
    };
    // The sample that spawns (the second novel one), saved at once.
    let spawn = |e: &mut Adapt| adapt_batch(e, 1, 61, None);
    // After a reboot: the weights and what the next request does.
    let after = |store: AdaptSlots| {
        let (mut e, restored) = adapt_on(&m, store);
        let params = e.model().params().to_vec();
        let next = adapt_batch(&mut e, 4, 62, None);
        (restored, bits(&params), next, bits(e.model().params()))
    };
    // The references: rebooted on the checkpoint before the spawn, and after it.
    let mut e = before();
    let ops_before = under_slots(&mut e.into_store(), |f| f.ops);
    let old = after({
        let e = before();
        e.into_store()
    });
    let mut e2 = before();
    let spawned = spawn(&mut e2);
    assert!(
        matches!(
            spawned[..],
            [
                Response::Centre {
                    slot: 4,
                    change: CentreChange::Spawned,
                    ..
                },
                Response::Trained { buffered: 5, .. }
            ]
        ),
        "{spawned:?}"
    );
    let mut store = e2.into_store();
    let n_ops = under_slots(&mut store, |f| f.ops) - ops_before;
    let new = after(store);
    assert_eq!(old.0, Some(1));
    assert_eq!(new.0, Some(2));
    assert_ne!(old.1, new.1, "the spawn changed the segmenter");
    // A save: every sector of the slot erased, every word of the record written.
    assert!(n_ops > 100, "{n_ops}");
    for k in 0..=n_ops {
        e = before();
        let mut store = e.into_store();
        under_slots(&mut store, |f| f.cut = Some(f.ops + k));
        let (mut e, _) = adapt_on(&m, store);
        let answers = spawn(&mut e);
        let mut store = e.into_store();
        under_slots(&mut store, |f| f.cut = None);
        let got = after(store);
        if k < n_ops {
            assert_eq!(
                answers.last(),
                Some(&Response::Error(ErrorCode::Storage)),
                "k = {k}"
            );
            assert_eq!(got, old, "cut before operation {k} of {n_ops}");
        } else {
            assert_eq!(got, new, "no cut");
        }
    }
    println!(
        "the adapting engine's spawn under a power cut: {} cut points",
        n_ops + 1
    );
}
