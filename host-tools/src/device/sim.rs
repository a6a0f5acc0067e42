//! A simulated device in a thread: the protocol's inference service, built from the
//! core ([`hvae::protocol`], [`hvae::model::Model`]), talking over in-memory pipes, with
//! injectable faults. The tests of the client and of `hvae validate` run against it, so
//! every fault a real device can show (a stall, garbage, a reset in the middle of an
//! answer, a wrong answer) is exercised without hardware.
//!
//! Like the `cluster` firmware it serves `Info`, `Segment`, `Encode`, `LoadWeights`
//! (all or nothing: staged, switched after the CRC checked out, kept across a reset like
//! a flash slot), `ReadWeights` and `Checkpoint`.

use super::link::Link;
use hvae::model::VecModel;
use hvae::protocol::answer::{answer_encode, answer_segment};
use hvae::protocol::{
    encode, DeviceInfo, ErrorCode, FrameDecoder, Request, Response, WeightLoader, CAP_CHECKPOINT,
    CAP_ENCODE, CAP_LOAD, CAP_READ, CAP_SEGMENT, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, MAX_VALUES,
};
use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, Mutex};

/// A misbehaviour, triggered when the device receives its `at`-th request (0-based,
/// counting every request of the device's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// From then on, read requests but never answer.
    Stall,
    /// Answer with bytes that are not a frame, then keep serving normally.
    Garbage,
    /// Write the first half of the answer, then reset: any load in progress is lost,
    /// the weights are the persistent ones, and the device serves again (once).
    Reset,
    /// Answer with a valid response of the wrong kind (`Ack`), then keep serving.
    WrongAnswer,
}

/// What the simulated device holds; shared so that a test can look at it.
#[derive(Debug)]
pub struct SimState {
    model: VecModel<f32>,
    crc: u32,
    /// Weights that survive a reset (the last loaded or checkpointed ones).
    persistent: (Vec<f32>, u32),
    loader: WeightLoader,
    staging: Vec<f32>,
    requests: usize,
    fault: Option<(usize, Fault)>,
    /// Resets so far.
    pub resets: usize,
}

impl SimState {
    /// A device running `model`, whose weights have CRC `crc`.
    pub fn new(model: VecModel<f32>, crc: u32) -> SimState {
        let shape = *model.shape();
        SimState {
            persistent: (model.params().to_vec(), crc),
            staging: vec![0.0; shape.param_len()],
            loader: WeightLoader::new(shape),
            model,
            crc,
            requests: 0,
            fault: None,
            resets: 0,
        }
    }

    /// Arms `fault` at the `at`-th request from now.
    pub fn with_fault(mut self, at: usize, fault: Fault) -> SimState {
        self.fault = Some((self.requests + at, fault));
        self
    }

    /// CRC of the weights in use.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests
    }

    fn info(&self) -> DeviceInfo {
        let shape = self.model.shape();
        DeviceInfo::new(
            shape,
            shape.param_len(),
            self.crc,
            MAX_REQUEST_FRAME,
            CAP_SEGMENT | CAP_ENCODE | CAP_LOAD | CAP_READ | CAP_CHECKPOINT,
        )
    }

    /// Answers one request as the firmware does, handing each response to `emit`: one,
    /// or one per sample for `Segment` and `Encode` (the core's `protocol::answer`, two
    /// samples at a time).
    pub fn handle_each(&mut self, req: &Request, emit: &mut dyn FnMut(&Response)) {
        let mut out = Response::Ack;
        let mut work = vec![0.0f32; 2 * self.model.shape().work_len()];
        match req {
            Request::Segment { sample } => {
                answer_segment::<_, true>(&self.model, sample, &mut work, &mut out, emit)
            }
            Request::Encode { sample } => {
                answer_encode::<_, true>(&self.model, sample, &mut work, &mut out, emit)
            }
            _ => emit(&self.try_handle(req).unwrap_or_else(Response::Error)),
        }
    }

    fn try_handle(&mut self, req: &Request) -> Result<Response, ErrorCode> {
        match req {
            Request::Info => Ok(Response::Info(self.info())),
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
                let staging = &mut self.staging;
                self.loader.feed(*offset, bytes, |i, v| {
                    *staging.get_mut(i).ok_or(ErrorCode::LoadLength)? = v;
                    Ok(())
                })?;
                if !*last {
                    return Ok(Response::Ack);
                }
                let crc = self.loader.finish()?;
                let shape = *self.model.shape();
                self.model = VecModel::new(shape, self.staging.clone())
                    .map_err(|_| ErrorCode::NonFiniteWeight { index: 0 })?;
                self.crc = crc;
                // Loaded weights go to flash as they arrive: they survive a reset.
                self.persistent = (self.model.params().to_vec(), crc);
                Ok(Response::Loaded { weights_crc: crc })
            }
            Request::Checkpoint => {
                self.persistent = (self.model.params().to_vec(), self.crc);
                Ok(Response::Checkpointed {
                    weights_crc: self.crc,
                })
            }
            Request::TrainBatch { .. } => Err(ErrorCode::Unsupported),
        }
    }

    fn reset(&mut self) {
        let shape = *self.model.shape();
        let (params, crc) = self.persistent.clone();
        if let Ok(m) = VecModel::new(shape, params) {
            self.model = m;
            self.crc = crc;
        }
        self.loader.reset();
        self.resets += 1;
    }
}

/// A simulated device: its state and a way to connect to it.
#[derive(Clone, Debug)]
pub struct SimDevice {
    /// The device's state.
    pub state: Arc<Mutex<SimState>>,
}

impl SimDevice {
    /// A device with `state`.
    pub fn new(state: SimState) -> SimDevice {
        SimDevice {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Connects: a serving thread on fresh pipes, and the host's end as a [`Link`]. The
    /// thread ends when the link is dropped.
    pub fn connect(&self) -> std::io::Result<Link> {
        let (req_rx, req_tx) = std::io::pipe()?;
        let (resp_rx, resp_tx) = std::io::pipe()?;
        let state = Arc::clone(&self.state);
        std::thread::spawn(move || serve(state, req_rx, resp_tx));
        Ok(Link::new("simulated device", resp_rx, req_tx))
    }

    /// Serves on any byte stream (e.g. the master side of a pseudo-terminal, to test
    /// the serial transport) in a thread, until the stream ends or fails. A read that
    /// times out (a serial port's read timeout) is a quiet line, not an end.
    pub fn serve_on<R, W>(&self, reader: R, writer: W)
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let state = Arc::clone(&self.state);
        std::thread::spawn(move || serve(state, reader, writer));
    }
}

fn serve(state: Arc<Mutex<SimState>>, mut rx: impl Read, mut tx: impl Write) {
    let mut decoder = FrameDecoder::<MAX_REQUEST_FRAME>::new();
    let mut buf = [0u8; 1024];
    let mut out = vec![0u8; MAX_RESPONSE_FRAME];
    loop {
        let n = match rx.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            // A quiet line, not the end of it: a serial port's read timeout (the master
            // side of a pseudo-terminal reads with one) while the host pauses, e.g. while
            // it drains stale bytes before its first request. A real device keeps
            // listening too.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (used, got) = decoder.feed::<Request>(rest);
            rest = &rest[used..];
            let Some(got) = got else { continue };
            let Ok(mut st) = state.lock() else { return };
            let index = st.requests;
            st.requests += 1;
            let fault = match st.fault {
                Some((at, f)) if index >= at => Some(f),
                _ => None,
            };
            let mut resps = Vec::new();
            match &got {
                Ok(req) => st.handle_each(req, &mut |r| resps.push(r.clone())),
                Err(e) => resps.push(Response::Error((*e).into())),
            }
            let mut frames = Vec::with_capacity(resps.len());
            for r in &resps {
                let Ok(f) = encode(r, &mut out) else { return };
                frames.push(f.to_vec());
            }
            let Some(frame) = frames.first() else { return };
            // A fault hits the request's first response (and a device that stalls or
            // resets sends none of the others).
            let written = match fault {
                None => frames.iter().try_for_each(|f| tx.write_all(f)),
                Some(Fault::Stall) => Ok(()),
                Some(Fault::Garbage) => {
                    st.fault = None;
                    // Bytes a line at the wrong baud rate might show: not COBS.
                    tx.write_all(&[0x05, 0xFF, 0x13, 0x00])
                }
                Some(Fault::WrongAnswer) => {
                    st.fault = None;
                    let mut small = [0u8; 8];
                    match encode(&Response::Ack, &mut small) {
                        Ok(f) => tx.write_all(f),
                        Err(_) => return,
                    }
                }
                Some(Fault::Reset) => {
                    st.fault = None;
                    let half = frame.len() / 2;
                    let r = tx.write_all(&frame[..half]);
                    st.reset();
                    decoder.reset();
                    rest = &[];
                    r
                }
            };
            if written.and_then(|()| tx.flush()).is_err() {
                return;
            }
        }
    }
}
