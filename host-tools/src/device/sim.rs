//! A simulated device in a thread: the core's device engine ([`hvae::device::Engine`])
//! with the inference capabilities ([`hvae::device::INFER`]), talking over in-memory
//! pipes, with injectable faults. The tests of the client and of `hvae validate` run
//! against it, so every fault a real device can show (a stall, garbage, a reset in the
//! middle of an answer, a wrong answer) is exercised without hardware.
//!
//! Like the `cluster` firmware it serves `Info`, `Segment`, `Encode`, `LoadWeights`
//! (all or nothing: staged, switched after the CRC checked out, kept across a reset in
//! the engine's checkpoint slots, in memory), `ReadWeights` and `Checkpoint`.

use super::learn_host::{learn_store, HostStore, INPUTS, WORK};
use hvae::device::{Engine, CAP, INFER};
use hvae::protocol::{
    encode, FrameDecoder, Request, Response, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
};
use hvae::VecModel;
use hvae_devkit::Link;
use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, Mutex};

/// The engine of the simulated device: like `cluster`'s, it keeps no training state.
type SimEngine = Engine<INPUTS, WORK, VecModel, HostStore, INFER, CAP, f32, ()>;

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
pub struct SimState {
    /// The engine; `None` if it refused to boot again after a reset (it then answers
    /// nothing, as a dead device).
    engine: Option<SimEngine>,
    /// The weights a reset boots with (the compiled-in ones), before the newest
    /// checkpoint's replace them.
    boot: (VecModel<f32>, u32),
    requests: usize,
    fault: Option<(usize, Fault)>,
    /// Resets so far.
    pub resets: usize,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("requests", &self.requests)
            .field("fault", &self.fault)
            .field("resets", &self.resets)
            .finish_non_exhaustive()
    }
}

impl SimState {
    /// A device running `model`, whose weights have CRC `crc`; an error when the engine
    /// cannot run it (not [`INPUTS`] inputs).
    pub fn new(model: VecModel<f32>, crc: u32) -> Result<SimState, String> {
        let engine = Self::boot(model.clone(), crc, learn_store(model.shape())?)?;
        Ok(SimState {
            engine: Some(engine),
            boot: (model, crc),
            requests: 0,
            fault: None,
            resets: 0,
        })
    }

    fn boot(model: VecModel<f32>, crc: u32, store: HostStore) -> Result<SimEngine, String> {
        let mut e = Engine::new(model, crc, store, MAX_REQUEST_FRAME)
            .map_err(|e| format!("the device engine refuses the model: {e}"))?;
        e.restore()
            .map_err(|e| format!("the device's checkpoints: {e}"))?;
        Ok(e)
    }

    /// Arms `fault` at the `at`-th request from now.
    pub fn with_fault(mut self, at: usize, fault: Fault) -> SimState {
        self.fault = Some((self.requests + at, fault));
        self
    }

    /// CRC of the weights in use (0 for a dead device).
    pub fn crc(&mut self) -> u32 {
        self.engine.as_mut().map_or(0, |e| e.crc())
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// Answers one request with the engine, handing each response to `emit`.
    pub fn handle_each(&mut self, req: &Request, emit: &mut dyn FnMut(&Response)) {
        if let Some(e) = self.engine.as_mut() {
            e.handle_each(req, emit);
        }
    }

    /// A reset: a load in progress is lost, the device boots again on its compiled-in
    /// weights and puts its newest checkpoint's back.
    fn reset(&mut self) {
        if let Some(e) = self.engine.take() {
            let (model, crc) = self.boot.clone();
            self.engine = Self::boot(model, crc, e.into_store()).ok();
        }
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
