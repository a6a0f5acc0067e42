//! Request/response with a device over a [`Link`]: framing, timeouts, re-synchronisation,
//! chunked weight loading, paged weight reading, training batches.
//!
//! The protocol is strictly one request, one response ([`hvae::protocol`]). The client
//! sends a request, then reads bytes through a [`FrameDecoder`] until one frame is
//! complete. Every way this can go wrong is a [`DeviceError`] that names the fault in
//! one line:
//!
//! | fault | error |
//! |---|---|
//! | no byte before the timeout | [`DeviceError::Stalled`] |
//! | part of a frame, then silence (a reset while answering, a cut line) | [`DeviceError::Cut`] |
//! | a frame that is not a response (noise, a baud-rate mismatch, a boot banner) | [`DeviceError::Garbage`] |
//! | a valid response of the wrong kind | [`DeviceError::WrongAnswer`] |
//! | the stream ended (qemu exited, the port went away) | [`DeviceError::Closed`] |
//! | the device refused the request | [`DeviceError::Refused`] |
//!
//! [`Device::sync`] starts every session: it sends a lone `0x00` (which ends any half
//! frame the device may still hold from an interrupted session; the device ignores empty
//! frames), drops whatever stale bytes are still in flight, then asks for
//! [`Request::Info`], skipping up to a few stale frames. So a session that follows a
//! failed one starts cleanly.
//!
//! Besides the typed requests, [`Device::exchange`], [`Device::answers`] and
//! [`Device::send_raw`] give the answers as they come (error answers included) and put
//! arbitrary bytes on the line: the firmware's conformance checks send malformed frames
//! on purpose and check the error answers.

use crate::link::{Link, Recv};
use hvae::protocol::{
    encode, CentreChange, DeviceInfo, ErrorCode, FrameDecoder, FrameError, Request, Response,
    TrainSettings, MAX_CHUNK, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, MAX_SAMPLE, MAX_VALUES,
    VERSION,
};
use std::fmt;
use std::time::{Duration, Instant};

/// Why talking to the device failed. `Display` is one line naming the fault.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceError {
    /// Nothing arrived in time.
    Stalled {
        /// The request waiting for its answer.
        request: &'static str,
        /// How long the client waited.
        waited: Duration,
    },
    /// Part of an answer arrived, then nothing.
    Cut {
        /// The request.
        request: &'static str,
        /// Bytes of the unfinished frame.
        bytes: usize,
    },
    /// A frame that is not a response.
    Garbage {
        /// The request.
        request: &'static str,
        /// What is wrong with the frame.
        error: FrameError,
    },
    /// A response of the wrong kind.
    WrongAnswer {
        /// The request.
        request: &'static str,
        /// The kind of response received.
        got: &'static str,
    },
    /// The stream ended.
    Closed {
        /// The request.
        request: &'static str,
        /// Why, as far as known.
        why: String,
    },
    /// The device answered with an error.
    Refused {
        /// The request.
        request: &'static str,
        /// The device's error code.
        code: ErrorCode,
    },
    /// Sending failed.
    Send {
        /// The request.
        request: &'static str,
        /// The I/O error.
        error: String,
    },
    /// The device cannot do what is asked (protocol version, capability, sizes).
    Incompatible(String),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Stalled { request, waited } => write!(
                f,
                "device stalled: no answer to {request} within {:.1} s",
                waited.as_secs_f64()
            ),
            DeviceError::Cut { request, bytes } => write!(
                f,
                "device stopped in the middle of its answer to {request} ({bytes} bytes, then \
                 nothing): it reset or the line was cut"
            ),
            DeviceError::Garbage { request, error } => {
                write!(f, "device answered {request} with garbage ({error})")
            }
            DeviceError::WrongAnswer { request, got } => {
                write!(
                    f,
                    "device answered {request} with an unrelated {got} response"
                )
            }
            DeviceError::Closed { request, why } => {
                write!(f, "device went away while answering {request}: {why}")
            }
            DeviceError::Refused { request, code } => {
                write!(f, "device refused {request}: {code}")
            }
            DeviceError::Send { request, error } => {
                write!(f, "cannot send {request} to the device: {error}")
            }
            DeviceError::Incompatible(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for DeviceError {}

/// Name of a request, for messages.
pub fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Info => "Info",
        Request::LoadWeights { .. } => "LoadWeights",
        Request::Segment { .. } => "Segment",
        Request::Encode { .. } => "Encode",
        Request::ReadWeights { .. } => "ReadWeights",
        Request::Checkpoint => "Checkpoint",
        Request::TrainBatch { .. } => "TrainBatch",
    }
}

/// Name of a response, for messages.
pub fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Info(_) => "Info",
        Response::Segmented { .. } => "Segmented",
        Response::Encoded { .. } => "Encoded",
        Response::Weights { .. } => "Weights",
        Response::Ack => "Ack",
        Response::Error(_) => "Error",
        Response::Loaded { .. } => "Loaded",
        Response::Checkpointed { .. } => "Checkpointed",
        Response::Trained { .. } => "Trained",
        Response::Centre { .. } => "Centre",
    }
}

/// One sample's answer from the device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSegment {
    /// Most probable cluster.
    pub label: usize,
    /// Cluster probabilities.
    pub probs: Vec<f32>,
    /// Cosine to the nearest centre.
    pub cosine: f32,
    /// Mean direction.
    pub mu: Vec<f32>,
    /// Concentration.
    pub kappa: f32,
}

/// The answer to a [`Request::TrainBatch`].
#[derive(Clone, Debug, PartialEq)]
pub struct Trained {
    /// Samples in the device's buffer (online k-means: centre slots in use).
    pub buffered: u32,
    /// Steps taken so far.
    pub steps: u32,
    /// Loss of the last step (NaN if none).
    pub loss: f32,
    /// The centre slots the request changed (online k-means: spawned, starved,
    /// merged), in order.
    pub centres: Vec<CentreEvent>,
}

/// A centre slot the device changed ([`Response::Centre`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CentreEvent {
    /// The slot that changed.
    pub slot: u8,
    /// What happened to it.
    pub change: CentreChange,
    /// Index, in the request's samples, of the sample after which it happened.
    pub sample: u16,
    /// Centre slots in use after it.
    pub in_use: u8,
}

/// True for a response that is an event of a request ([`Response::Centre`]) rather
/// than its answer: the answer still follows.
pub fn is_event(r: &Response) -> bool {
    matches!(r, Response::Centre { .. })
}

/// Timeouts of a session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    /// Waiting for the first answer of a session (a device that is still booting).
    pub first: Duration,
    /// Waiting for any other answer.
    pub answer: Duration,
    /// Waiting for a training batch's answer (steps take long on a device).
    pub train: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first: Duration::from_secs(10),
            answer: Duration::from_secs(5),
            train: Duration::from_secs(60),
        }
    }
}

/// A session with a device.
pub struct Device {
    link: Link,
    rx: Box<FrameDecoder<MAX_RESPONSE_FRAME>>,
    /// Bytes received after the last answer taken: the next answers of a request that
    /// gets several (one per sample), or a device out of step (dropped at the next
    /// request).
    pending: Vec<u8>,
    tx: Vec<u8>,
    /// What was sent last, for messages.
    last_request: &'static str,
    /// Timeouts in use.
    pub timeouts: Timeouts,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("link", &self.link)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// Stale frames [`Device::sync`] skips before the `Info` answer.
const SYNC_SKIP: usize = 8;

impl Device {
    /// A session over `link`.
    pub fn new(link: Link, timeouts: Timeouts) -> Device {
        Device {
            link,
            rx: Box::new(FrameDecoder::new()),
            pending: Vec::new(),
            tx: vec![0u8; MAX_REQUEST_FRAME],
            last_request: "nothing",
            timeouts,
        }
    }

    /// What the device is.
    pub fn name(&self) -> &str {
        self.link.name()
    }

    /// Starts a session: flushes any half frame out of the device, drops stale bytes,
    /// and asks for [`Request::Info`] (skipping a few stale answers). Checks the
    /// protocol version.
    pub fn sync(&mut self) -> Result<DeviceInfo, DeviceError> {
        let request = "Info";
        self.rx.reset();
        self.pending.clear();
        self.link.send(&[0]).map_err(|e| DeviceError::Send {
            request,
            error: e.to_string(),
        })?;
        self.link
            .drain(Duration::from_millis(100), Duration::from_secs(2));
        self.send(&Request::Info)?;
        let deadline = Instant::now() + self.timeouts.first;
        let mut skipped = 0;
        loop {
            match self.receive(request, deadline, self.timeouts.first) {
                Ok(Response::Info(info)) => {
                    if info.protocol != VERSION {
                        return Err(DeviceError::Incompatible(format!(
                            "device speaks protocol version {}, this tool {VERSION}",
                            info.protocol
                        )));
                    }
                    return Ok(info);
                }
                // A stale answer (or the error answer to a stale half frame).
                Ok(_) | Err(DeviceError::Garbage { .. }) if skipped < SYNC_SKIP => {
                    skipped += 1;
                }
                Ok(other) => {
                    return Err(DeviceError::WrongAnswer {
                        request,
                        got: response_name(&other),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, req: &Request) -> Result<(), DeviceError> {
        let request = self.start(request_name(req));
        let frame = encode(req, &mut self.tx).map_err(|e| DeviceError::Send {
            request,
            error: e.to_string(),
        })?;
        self.link.send(frame).map_err(|e| DeviceError::Send {
            request,
            error: e.to_string(),
        })
    }

    /// Puts `bytes` on the line as they are (a frame made by hand, a malformed one, a
    /// lone `0x00`); read what the device makes of them with [`Device::answer`].
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        let request = self.start("raw bytes");
        self.link.send(bytes).map_err(|e| DeviceError::Send {
            request,
            error: e.to_string(),
        })
    }

    /// Begins an exchange: remembers `request` for messages and drops the answers the
    /// last one left unread.
    fn start(&mut self, request: &'static str) -> &'static str {
        if !self.pending.is_empty() {
            // More answers than the last request gets: the device is out of step; the
            // extra bytes are dropped.
            self.pending.clear();
            self.rx.reset();
        }
        self.last_request = request;
        request
    }

    /// The device's next answer as it comes (an error answer is a
    /// [`Response::Error`], not a [`DeviceError`]), waiting at most
    /// [`Timeouts::answer`].
    pub fn answer(&mut self) -> Result<Response, DeviceError> {
        let timeout = self.timeouts.answer;
        self.receive(self.last_request, Instant::now() + timeout, timeout)
    }

    /// Sends `req` and returns its answer as it comes (see [`Device::answer`]).
    pub fn exchange(&mut self, req: &Request) -> Result<Response, DeviceError> {
        self.send(req)?;
        self.answer()
    }

    /// Sends `req` and returns its first `n` answers as they come: a request of `n`
    /// samples gets one answer per sample.
    pub fn answers(&mut self, req: &Request, n: usize) -> Result<Vec<Response>, DeviceError> {
        self.send(req)?;
        (0..n).map(|_| self.answer()).collect()
    }

    /// Reads one frame (until `deadline`).
    fn receive(
        &mut self,
        request: &'static str,
        deadline: Instant,
        waited: Duration,
    ) -> Result<Response, DeviceError> {
        loop {
            let received = if self.pending.is_empty() {
                self.link.recv(deadline)
            } else {
                Recv::Bytes(std::mem::take(&mut self.pending))
            };
            match received {
                Recv::Bytes(bytes) => {
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let (used, got) = self.rx.feed::<Response>(rest);
                        rest = &rest[used..];
                        match got {
                            None => {}
                            Some(Ok(r)) => {
                                // The next answers of this request, if it gets several.
                                self.pending = rest.to_vec();
                                return Ok(r);
                            }
                            Some(Err(error)) => {
                                self.rx.reset();
                                return Err(DeviceError::Garbage { request, error });
                            }
                        }
                    }
                }
                Recv::Timeout => {
                    let bytes = self.rx.pending();
                    self.rx.reset();
                    return Err(if bytes > 0 {
                        DeviceError::Cut { request, bytes }
                    } else {
                        DeviceError::Stalled { request, waited }
                    });
                }
                Recv::Closed(why) => return Err(DeviceError::Closed { request, why }),
            }
        }
    }

    /// Sends `req` and waits for its answer; an error answer becomes
    /// [`DeviceError::Refused`]. Events before the answer ([`is_event`]) are passed
    /// over: [`Device::request_all`] keeps them.
    pub fn request(&mut self, req: &Request, timeout: Duration) -> Result<Response, DeviceError> {
        let mut all = self.request_all(req, timeout)?;
        all.pop().ok_or(DeviceError::Incompatible(
            "a request without an answer".to_string(),
        ))
    }

    /// Sends `req` and waits for its answer: the events that came first, then the
    /// answer (last). An error answer becomes [`DeviceError::Refused`]; each response
    /// has `timeout` to arrive.
    pub fn request_all(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Vec<Response>, DeviceError> {
        let request = request_name(req);
        self.send(req)?;
        let mut all = Vec::new();
        loop {
            match self.receive(request, Instant::now() + timeout, timeout)? {
                Response::Error(code) => return Err(DeviceError::Refused { request, code }),
                r if is_event(&r) => all.push(r),
                r => {
                    all.push(r);
                    return Ok(all);
                }
            }
        }
    }

    fn wrong(request: &'static str, r: &Response) -> DeviceError {
        DeviceError::WrongAnswer {
            request,
            got: response_name(r),
        }
    }

    /// Asks for the device's info.
    pub fn info(&mut self) -> Result<DeviceInfo, DeviceError> {
        match self.request(&Request::Info, self.timeouts.answer)? {
            Response::Info(i) => Ok(i),
            r => Err(Self::wrong("Info", &r)),
        }
    }

    /// Encodes and segments one sample on the device.
    pub fn segment(&mut self, sample: &[f32]) -> Result<DeviceSegment, DeviceError> {
        let request = "Segment";
        match self.segment_batch(sample, sample.len())?.pop() {
            Some(Ok(s)) => Ok(s),
            Some(Err(code)) => Err(DeviceError::Refused { request, code }),
            None => Err(DeviceError::Incompatible("an empty sample".to_string())),
        }
    }

    /// Encodes and segments the samples `xs` (`n` samples of `d` values, one after the
    /// other, `n * d <= MAX_SAMPLE`) with one request; returns each sample's answer in
    /// order (a sample the device refuses gets its error code, the others their
    /// results). See [`max_samples`] for how many fit a device's receive buffer.
    ///
    /// [`max_samples`]: hvae::protocol::max_samples
    pub fn segment_batch(
        &mut self,
        xs: &[f32],
        d: usize,
    ) -> Result<Vec<Result<DeviceSegment, ErrorCode>>, DeviceError> {
        let request = "Segment";
        if d == 0 || xs.is_empty() || !xs.len().is_multiple_of(d) {
            return Err(DeviceError::Incompatible(format!(
                "{} values are not a whole number of samples of {d}",
                xs.len()
            )));
        }
        let sample = heapless::Vec::from_slice(xs).map_err(|_| {
            DeviceError::Incompatible(format!(
                "{} values are more than the protocol's {MAX_SAMPLE} per request",
                xs.len()
            ))
        })?;
        self.send(&Request::Segment { sample })?;
        let n = xs.len() / d;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let timeout = self.timeouts.answer;
            out.push(
                match self.receive(request, Instant::now() + timeout, timeout)? {
                    Response::Segmented {
                        label,
                        probs,
                        cosine,
                        mu,
                        kappa,
                    } => Ok(DeviceSegment {
                        label: usize::from(label),
                        probs: probs.to_vec(),
                        cosine,
                        mu: mu.to_vec(),
                        kappa,
                    }),
                    Response::Error(code) if out.is_empty() && code == ErrorCode::InputLength => {
                        // The whole request was refused: one answer, not one per sample.
                        return Err(DeviceError::Refused { request, code });
                    }
                    Response::Error(code) => Err(code),
                    r => return Err(Self::wrong(request, &r)),
                },
            );
        }
        Ok(out)
    }

    /// Loads a weight blob in [`MAX_CHUNK`]-byte chunks; returns the CRC the device
    /// reports for the new weights.
    pub fn load_weights(&mut self, blob: &[u8]) -> Result<u32, DeviceError> {
        let chunks: Vec<&[u8]> = blob.chunks(MAX_CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let req = Request::LoadWeights {
                offset: (i * MAX_CHUNK) as u32,
                bytes: heapless::Vec::from_slice(chunk)
                    .map_err(|_| DeviceError::Incompatible("weight chunk too long".to_string()))?,
                last,
            };
            // The last chunk checks the CRC and commits to flash: give it longer.
            let timeout = if last {
                self.timeouts.train
            } else {
                self.timeouts.answer
            };
            match (self.request(&req, timeout)?, last) {
                (Response::Ack, false) => {}
                (Response::Loaded { weights_crc }, true) => return Ok(weights_crc),
                (r, _) => return Err(Self::wrong("LoadWeights", &r)),
            }
        }
        Err(DeviceError::Incompatible("empty weight blob".to_string()))
    }

    /// Reads `count` values of the flat parameter vector from index 0, [`MAX_VALUES`]
    /// per request.
    pub fn read_weights(&mut self, count: usize) -> Result<Vec<f32>, DeviceError> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let offset = out.len() as u32;
            let n = (count - out.len()).min(MAX_VALUES) as u16;
            match self.request(
                &Request::ReadWeights { offset, count: n },
                self.timeouts.answer,
            )? {
                Response::Weights { offset: o, values }
                    if o == offset && values.len() == usize::from(n) =>
                {
                    out.extend_from_slice(&values)
                }
                Response::Weights { offset: o, values } => {
                    return Err(DeviceError::Incompatible(format!(
                        "device answered ReadWeights at {offset} x {n} with {} values at {o}",
                        values.len()
                    )))
                }
                r => return Err(Self::wrong("ReadWeights", &r)),
            }
        }
        Ok(out)
    }

    /// Pushes `samples` (`n * D` raw values, at most [`MAX_SAMPLE`]) into the device's
    /// training buffer, then takes `steps` steps (with new `settings` if given).
    pub fn train(
        &mut self,
        samples: &[f32],
        steps: u16,
        settings: Option<TrainSettings>,
    ) -> Result<Trained, DeviceError> {
        let samples = heapless::Vec::from_slice(samples).map_err(|_| {
            DeviceError::Incompatible(format!(
                "a training batch of {} values is longer than the protocol's {MAX_SAMPLE}",
                samples.len()
            ))
        })?;
        let req = Request::TrainBatch {
            samples,
            steps,
            settings,
        };
        let mut centres = Vec::new();
        for r in self.request_all(&req, self.timeouts.train)? {
            match r {
                Response::Centre {
                    slot,
                    change,
                    sample,
                    in_use,
                } => centres.push(CentreEvent {
                    slot,
                    change,
                    sample,
                    in_use,
                }),
                Response::Trained {
                    buffered,
                    steps,
                    loss,
                } => {
                    return Ok(Trained {
                        buffered,
                        steps,
                        loss,
                        centres,
                    })
                }
                r => return Err(Self::wrong("TrainBatch", &r)),
            }
        }
        Err(DeviceError::Incompatible(
            "a TrainBatch without an answer".to_string(),
        ))
    }

    /// Makes the device's current weights persistent; returns their CRC.
    pub fn checkpoint(&mut self) -> Result<u32, DeviceError> {
        match self.request(&Request::Checkpoint, self.timeouts.train)? {
            Response::Checkpointed { weights_crc } => Ok(weights_crc),
            r => Err(Self::wrong("Checkpoint", &r)),
        }
    }
}
