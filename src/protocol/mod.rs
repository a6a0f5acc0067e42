//! Device <-> host messages: `postcard`-serialised [`Request`]s and [`Response`]s in
//! COBS frames over any byte stream (a UART on a board, the emulated UART under qemu).
//!
//! Enabled by the `protocol` feature; `no_std`, no allocation: every message has a
//! bounded size ([`MAX_SAMPLE`], [`MAX_CHUNK`], ...) and is built in `heapless` vectors.
//!
//! # Framing
//!
//! A frame is the COBS encoding of one postcard message followed by one `0x00` byte
//! ([`encode`]). COBS removes every zero from the message, so `0x00` only ever ends a
//! frame and a receiver that lost track (noise, a reset, a half-written frame) is back in
//! step at the next `0x00`. [`FrameDecoder`] accumulates bytes into a fixed buffer and
//! yields one decoded message per frame, or a typed [`FrameError`] for a frame that is
//! oversized, not valid COBS, cut short or not a message; it never panics and
//! resynchronises at the next `0x00`. Empty frames (`0x00 0x00`) are ignored, so a host
//! may send a lone `0x00` first to flush a half-received frame out of the device.
//!
//! # Conversation
//!
//! Requests are answered in order. Every request gets exactly one [`Response`], except
//! [`Request::Segment`] and [`Request::Encode`], which carry `n >= 1` samples and get
//! one response per sample ([`answer`]), and [`Request::TrainBatch`], whose answer may
//! be preceded by [`Response::Centre`] events (online k-means only); a frame the device cannot decode gets one
//! [`Response::Error`] with the frame error's [`ErrorCode`], and the device keeps
//! serving. A host should therefore send a request, read its responses, and so on
//! (pipelining works too, since the device answers in order, but a damaged request then
//! shifts nothing: it still gets its one error response). How many samples fit a
//! request: [`max_samples`] of the device's [`DeviceInfo::max_frame`].
//!
//! | request | response | notes |
//! |---|---|---|
//! | [`Request::Info`] | [`Response::Info`] | versions, sizes, weights CRC, limits |
//! | [`Request::Segment`] | one [`Response::Segmented`] per sample | `n` samples of `D` raw values, one after the other |
//! | [`Request::Encode`] | one [`Response::Encoded`] per sample | `n` samples |
//! | [`Request::LoadWeights`] | [`Response::Ack`], then [`Response::Loaded`] on the `last` chunk | the weight blob ([`crate::store::blob`]) in order, [`MAX_CHUNK`] bytes at a time |
//! | [`Request::ReadWeights`] | [`Response::Weights`] | values of the flat parameter vector |
//! | [`Request::Checkpoint`] | [`Response::Checkpointed`] | persist the current weights |
//! | [`Request::TrainBatch`] | a [`Response::Centre`] per centre spawned or retired, then [`Response::Trained`] | devices that learn ([`CAP_TRAIN`]) |
//!
//! Loading weights is all or nothing: the device streams the blob through a
//! [`WeightLoader`] (header, sizes and finiteness checked as the bytes arrive, CRC at
//! the end) into storage it is not running from, and switches to the new weights only
//! after the final chunk checked out. Any error aborts the load and the old weights stay
//! in use; a load restarts with a chunk at offset 0.
//!
//! # Compatibility
//!
//! postcard encodes an enum variant by its index, so variants are only ever appended.
//! [`VERSION`] is bumped when an existing message changes.
//!
//! ```
//! use hvae::protocol::{encode, FrameDecoder, Request, MAX_SAMPLE};
//! let sample = heapless::Vec::<f32, MAX_SAMPLE>::from_slice(&[0.5; 64]).unwrap();
//! let mut buf = [0u8; 512];
//! let frame = encode(&Request::Segment { sample: sample.clone() }, &mut buf).unwrap();
//! assert_eq!(frame.last(), Some(&0));
//! let mut rx = FrameDecoder::<512>::new();
//! let (used, got) = rx.feed::<Request>(frame);
//! assert_eq!(used, frame.len());
//! assert_eq!(got, Some(Ok(Request::Segment { sample })));
//! ```

pub mod answer;
pub mod borrowed;
mod frame;
mod loader;
mod messages;

pub use frame::*;
pub use loader::*;
pub use messages::*;
