//! The inference service: answers requests with the weights in use, loads new weights
//! into a flash slot, and keeps serving after any bad frame or request.
//!
//! Frames are received with the core's [`FrameDecoder::push_frame`] and read in place
//! with [`borrowed::parse`] (deserialising an owned `Request` would need several KiB of
//! stack, see [`hvae::protocol::borrowed`]); responses are the core's [`Response`],
//! encoded by the core. Every request gets exactly one response, except `Segment` and
//! `Encode`: up to [`BATCH`] samples, one response each (the core's
//! [`hvae::protocol::answer`]); failures are [`Response::Error`] with a typed
//! [`ErrorCode`], never a panic.
//!
//! # Memory (digits model: D = 64, hidden 32, M = 8, K = 10)
//! - [`Service`]: the model workspace (`SHAPE.work_len()` floats, 1,488 bytes), the
//!   weight loader's state and the samples being answered (`BATCH D` floats, 1,024
//!   bytes). The samples of a request are answered one at a time: the pair kernels of
//!   [`hvae::infer::model::Model::segment_batch`] (fewer instructions per sample) take more
//!   code than the 32 KiB flash budget leaves (figures in docs/device.md);
//! - [`serve`](Service::serve): the receive buffer ([`RX_FRAME`] bytes) and, while
//!   answering, one [`Response`] (about 1.3 KiB: the protocol's vectors have fixed
//!   capacities) and the transmit buffer ([`TX_FRAME`] bytes).
//!
//! The `learn` program runs the core's device engine (`hvae::device`: it serves the RAM
//! copy of all the weights it trains) over the same framing; a program that only adds
//! requests to this service answers them itself with [`Service::serve_with`].

use crate::board::{FlashWriter, Serial};
use crate::weights::{Active, SlotWriter, INFER_LEN, SHAPE};
use hvae::protocol::answer::{answer_encode, answer_segment};
use hvae::protocol::borrowed::{self, F32s, RequestRef};
use hvae::protocol::FrameDecoder;
use hvae::protocol::{
    encode, max_request_frame, max_response_frame, DeviceInfo, ErrorCode, FrameError, Response,
    WeightLoader, CAP_CHECKPOINT, CAP_ENCODE, CAP_LOAD, CAP_READ, CAP_SEGMENT, MAX_VALUES,
};

/// Most samples in one `Segment` or `Encode` request: four, a quarter of the round
/// trips of one at a time, for 768 bytes more receive buffer and 768 for the samples.
pub const BATCH: usize = 4;
/// Receive buffer: the longest request frame a `D`-input inference device accepts
/// (a `LoadWeights` chunk or [`BATCH`] samples of `D` values; longer frames are
/// `Oversized`).
pub const RX_FRAME: usize = max_request_frame(BATCH * SHAPE.input);
/// Transmit buffer: the longest response frame of this model.
pub const TX_FRAME: usize = max_response_frame(SHAPE.clusters, SHAPE.latent);
/// Workspace floats of one model call.
pub const WORK_LEN: usize = SHAPE.work_len();

/// Requests this service answers.
pub const CAPABILITIES: u32 = CAP_SEGMENT | CAP_ENCODE | CAP_LOAD | CAP_READ | CAP_CHECKPOINT;

/// Memory figures the device reports in [`DeviceInfo`] (the core's, shared with the
/// learning engine's `Store`).
pub use hvae::device::Resources;

/// The service's state: the weights in use, a workspace, a load in progress.
pub struct Service<F> {
    active: Active,
    work: [f32; WORK_LEN],
    samples: [f32; BATCH * SHAPE.input],
    loader: WeightLoader,
    writing: Option<SlotWriter>,
    flash: F,
}

impl<F: FlashWriter> Service<F> {
    /// A service running `active`, writing slots with `flash`.
    pub fn new(active: Active, flash: F) -> Self {
        Service {
            active,
            work: [0.0; WORK_LEN],
            samples: [0.0; BATCH * SHAPE.input],
            loader: WeightLoader::new(SHAPE),
            writing: None,
            flash,
        }
    }

    /// The weights in use.
    pub fn active(&self) -> &Active {
        &self.active
    }

    /// The flash writer (for a wrapping program that writes its own checkpoints).
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Switches to other weights (e.g. a checkpoint written by a wrapping program).
    /// Abandons a load in progress.
    pub fn set_active(&mut self, active: Active) {
        self.writing = None;
        self.loader.reset();
        self.active = active;
    }

    /// Answers one request: `emit` gets each response (one; one per sample for
    /// `Segment` and `Encode`). `TrainBatch` is `Unsupported` here.
    ///
    /// The answers are built in `out`, in place: a `Response` is about 1.3 KiB, and
    /// returning one by value through `Result`s would leave several copies on the stack.
    #[inline(never)]
    pub fn handle(
        &mut self,
        req: &RequestRef<'_>,
        res: Resources,
        out: &mut Response,
        emit: &mut dyn FnMut(&Response),
    ) {
        let r = match *req {
            RequestRef::Info => {
                self.info(res, out);
                Ok(())
            }
            RequestRef::Segment(x) => {
                if let Some(xs) = take_samples(&mut self.samples, x, out, emit) {
                    answer_segment::<_, false>(&self.active.model, xs, &mut self.work, out, emit);
                }
                return;
            }
            RequestRef::Encode(x) => {
                if let Some(xs) = take_samples(&mut self.samples, x, out, emit) {
                    answer_encode::<_, false>(&self.active.model, xs, &mut self.work, out, emit);
                }
                return;
            }
            RequestRef::ReadWeights { offset, count } => self.read(offset, count, out),
            RequestRef::LoadWeights {
                offset,
                bytes,
                last,
            } => self.load(offset, bytes, last).map(|loaded| {
                *out = match loaded {
                    Some(weights_crc) => Response::Loaded { weights_crc },
                    None => Response::Ack,
                }
            }),
            // Loaded weights are written to flash as they arrive: already persistent.
            RequestRef::Checkpoint => {
                *out = Response::Checkpointed {
                    weights_crc: self.active.blob_crc,
                };
                Ok(())
            }
            RequestRef::TrainBatch { .. } => Err(ErrorCode::Unsupported),
        };
        if let Err(e) = r {
            *out = Response::Error(e);
        }
        emit(out);
    }

    fn info(&self, res: Resources, out: &mut Response) {
        let mut info = DeviceInfo::new(
            &SHAPE,
            INFER_LEN,
            self.active.blob_crc,
            RX_FRAME,
            CAPABILITIES,
        );
        info.flash_used = res.flash;
        info.ram_static = res.ram;
        info.stack_peak = res.stack;
        *out = Response::Info(info);
    }

    #[inline(never)]
    fn read(&self, offset: u32, count: u16, out: &mut Response) -> Result<(), ErrorCode> {
        let start = offset as usize;
        let n = usize::from(count);
        let params = self.active.model.params();
        let values = start
            .checked_add(n)
            .filter(|&end| n <= MAX_VALUES && end <= params.len())
            .map(|end| &params[start..end])
            .ok_or(ErrorCode::OutOfRange)?;
        *out = Response::Weights {
            offset,
            values: heapless::Vec::new(),
        };
        if let Response::Weights { values: v, .. } = out {
            v.extend_from_slice(values)
                .map_err(|_| ErrorCode::Internal)?;
        }
        Ok(())
    }

    /// One `LoadWeights` chunk. A chunk at offset 0 starts a new blob: the slot the
    /// device does not run from is erased and the values go there as they arrive; the
    /// slot is sealed, and the device switches to it, only when the last chunk has
    /// checked out (length, header, finiteness, CRC). Any error abandons the load; the
    /// weights in use never change on failure.
    #[inline(never)]
    /// Returns the new weights' CRC after the last chunk, `None` before.
    fn load(&mut self, offset: u32, bytes: &[u8], last: bool) -> Result<Option<u32>, ErrorCode> {
        if offset == 0 {
            self.writing = None;
            let w =
                SlotWriter::begin(&mut self.flash, &self.active).map_err(|_| ErrorCode::Storage)?;
            self.writing = Some(w);
        }
        let r = self.load_chunk(offset, bytes, last);
        if r.is_err() || last {
            self.writing = None;
        }
        r
    }

    fn load_chunk(
        &mut self,
        offset: u32,
        bytes: &[u8],
        last: bool,
    ) -> Result<Option<u32>, ErrorCode> {
        let Some(writer) = self.writing.as_ref() else {
            // Not loading: a chunk must start a blob.
            self.loader.reset();
            return Err(ErrorCode::LoadOrder { expected: 0 });
        };
        let flash = &mut self.flash;
        self.loader.feed(offset, bytes, |i, v| {
            writer.put(flash, i, v).map_err(|_| ErrorCode::Storage)
        })?;
        if !last {
            return Ok(None);
        }
        let crc = self.loader.finish()?;
        let writer = self.writing.take().ok_or(ErrorCode::Internal)?;
        let new = writer
            .commit(&mut self.flash, crc, &self.active)
            .map_err(|_| ErrorCode::Storage)?;
        self.active = new;
        Ok(Some(crc))
    }

    /// The answers to one received frame (the message bytes after COBS decoding, or
    /// why there are none), each handed to `emit` (built in `out`): the request's
    /// responses, or one error response for a frame that is not a request.
    pub fn respond(
        &mut self,
        frame: Result<&[u8], FrameError>,
        resources: impl FnOnce() -> Resources,
        out: &mut Response,
        emit: &mut dyn FnMut(&Response),
    ) {
        match frame.and_then(borrowed::parse) {
            Ok(req) => self.respond_to(&req, resources, out, emit),
            Err(e) => {
                *out = Response::Error(e.into());
                emit(out);
            }
        }
    }

    /// The response to a parsed request (see [`Service::respond`]). `resources` is
    /// asked for the memory figures only when an `Info` request arrives (measuring the
    /// stack takes a scan).
    pub fn respond_to(
        &mut self,
        req: &RequestRef<'_>,
        resources: impl FnOnce() -> Resources,
        out: &mut Response,
        emit: &mut dyn FnMut(&Response),
    ) {
        let res = if matches!(req, RequestRef::Info) {
            resources()
        } else {
            Resources::default()
        };
        self.handle(req, res, out, emit);
    }

    /// Serves requests from `serial` forever: the response frames of each request frame
    /// (one per sample for `Segment` and `Encode`), and an error response for every frame
    /// that is malformed, truncated or longer than [`RX_FRAME`] (the receiver then
    /// resynchronises at the next `0x00`).
    pub fn serve<S: Serial>(&mut self, serial: &mut S, resources: impl FnMut() -> Resources) -> ! {
        self.serve_with(serial, resources, |_, _, _| false)
    }

    /// [`Service::serve`] with an extension: `ext` sees every request first and may
    /// answer it into the response (e.g. `TrainBatch` in `learn`; that answer is sent)
    /// and return `true`; `false` lets the service answer.
    pub fn serve_with<S, X>(
        &mut self,
        serial: &mut S,
        mut resources: impl FnMut() -> Resources,
        mut ext: X,
    ) -> !
    where
        S: Serial,
        X: FnMut(&mut Self, &RequestRef<'_>, &mut Response) -> bool,
    {
        let mut rx = FrameDecoder::<RX_FRAME>::new();
        // The one response value (see `handle`); every frame overwrites it.
        let mut out = Response::Ack;
        loop {
            let byte = serial.read();
            let Some(frame) = rx.push_frame(byte) else {
                continue;
            };
            match frame.and_then(borrowed::parse) {
                Ok(req) => {
                    if ext(self, &req, &mut out) {
                        send(serial, &out);
                    } else {
                        self.respond_to(&req, &mut resources, &mut out, &mut |r| send(serial, r));
                    }
                }
                Err(e) => {
                    out = Response::Error(e.into());
                    send(serial, &out);
                }
            }
        }
    }
}

/// Copies a request's samples into `buf` and returns them: a whole number of samples,
/// at most [`BATCH`]; else one `InputLength` error response (the core checks the rest).
pub fn take_samples<'b>(
    buf: &'b mut [f32; BATCH * SHAPE.input],
    x: F32s<'_>,
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) -> Option<&'b [f32]> {
    if let Some(xs) = buf.get_mut(..x.len()) {
        if x.copy_to(xs) {
            return Some(xs);
        }
    }
    *out = Response::Error(ErrorCode::InputLength);
    emit(out);
    None
}

/// The frame of `Response::Error(ErrorCode::Internal)`, spelled out as bytes (the
/// core's; `selftest` checks them against [`encode`]).
pub use hvae::device::INTERNAL_ERROR_FRAME;

/// Sends one response frame. `TX_FRAME` fits every response of this model
/// ([`max_response_frame`]); should encoding fail anyway, an `Internal` error is sent so
/// that the host still gets exactly one answer.
#[inline(never)]
pub fn send<S: Serial>(serial: &mut S, resp: &Response) {
    let mut tx = [0u8; TX_FRAME];
    match encode(resp, &mut tx) {
        Ok(frame) => serial.write_all(frame),
        Err(_) => serial.write_all(&INTERNAL_ERROR_FRAME),
    }
}
