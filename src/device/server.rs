//! The server: an [`Engine`] over a byte stream. Generic over the stream
//! ([`Transport`]); each transport is a small implementation where it lives (the
//! firmware's UART on the device, in-memory pipes with injectable faults in the host
//! tool's simulated device).

use crate::protocol::{encode, FrameDecoder, Response};

/// A byte stream a device serves on.
pub trait Transport {
    /// Why the stream failed (`core::convert::Infallible` for a UART that cannot).
    type Error;
    /// Waits for the next received byte.
    fn read(&mut self) -> Result<u8, Self::Error>;
    /// Sends all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// The frame of `Response::Error(ErrorCode::Internal)`: postcard gives variant index 5
/// (`Error`) and 23 (`Internal`), COBS prepends the distance to the first zero and the
/// frame ends with `0x00`. Spelled out as bytes because building the `Response` value to
/// encode would put a 1.3 KiB constant (the size of `Response`) into flash; the tests
/// check these bytes against [`encode`].
pub const INTERNAL_ERROR_FRAME: [u8; 4] = [0x03, 0x05, 0x17, 0x00];

/// Sends one response frame, encoded in `tx`; should encoding fail (a buffer shorter
/// than `max_response_frame` of the model), an `Internal` error is sent so that the host
/// still gets exactly one answer.
#[inline(never)]
pub fn send<T: Transport>(t: &mut T, resp: &Response, tx: &mut [u8]) -> Result<(), T::Error> {
    match encode(resp, tx) {
        Ok(frame) => t.write_all(frame),
        Err(_) => t.write_all(&INTERNAL_ERROR_FRAME),
    }
}

engine_impl! {
    /// Serves requests from `t` until it fails: the response frames of each request frame
    /// (one per sample for `Segment` and `Encode`), each encoded in a buffer of `TX`
    /// bytes, and an error response for every frame that is malformed, truncated or
    /// longer than `RX` bytes (the receiver then resynchronises at the next `0x00`).
    pub fn serve<T: Transport, const RX: usize, const TX: usize>(&mut self, t: &mut T) -> T::Error {
        let mut rx = FrameDecoder::<RX>::new();
        loop {
            let byte = match t.read() {
                Ok(b) => b,
                Err(e) => return e,
            };
            let Some(frame) = rx.push_frame(byte) else {
                continue;
            };
            let mut failed = None;
            self.respond(frame, &mut |r| {
                if failed.is_none() {
                    let mut tx = [0u8; TX];
                    failed = send(t, r, &mut tx).err();
                }
            });
            if let Some(e) = failed {
                return e;
            }
        }
    }
}
