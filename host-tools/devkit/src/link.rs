//! A byte stream to a device with receive timeouts.
//!
//! Every transport (a TCP socket to qemu's UART, a serial port, an in-memory pipe to a
//! simulated device) is a blocking reader and a writer. A reader thread turns the
//! blocking reads into messages on a channel, so that [`Link::recv`] can wait with a
//! deadline on any of them the same way: a stalled device is a timeout, never a hang.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// What the reader thread saw.
enum Event {
    Bytes(Vec<u8>),
    /// End of stream (the device closed the connection, or the process exited).
    Closed,
    Failed(io::Error),
}

/// The outcome of waiting for bytes.
#[derive(Debug)]
pub enum Recv {
    /// Bytes arrived.
    Bytes(Vec<u8>),
    /// Nothing arrived before the deadline.
    Timeout,
    /// The stream ended; why, as far as known.
    Closed(String),
}

/// A byte stream to a device: a writer, and a reader drained by a background thread.
pub struct Link {
    name: String,
    tx: Box<dyn Write + Send>,
    rx: Receiver<Event>,
    closed: Option<String>,
    /// Asked when the stream ends, for a better reason than "closed" (e.g. qemu's exit
    /// status and last output).
    on_close: Option<Box<dyn FnMut() -> String + Send>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link over `reader` and `writer`. `name` says what the device is, for messages.
    ///
    /// A reader whose `read` returns `TimedOut` or `WouldBlock` (a serial port with a
    /// read timeout) is simply read again; the thread ends at end of stream, on another
    /// error, or once the link is dropped.
    pub fn new<R, W>(name: impl Into<String>, mut reader: R, writer: W) -> Link
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let (events, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let ev = match reader.read(&mut buf) {
                    Ok(0) => Event::Closed,
                    Ok(n) => Event::Bytes(buf[..n].to_vec()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::TimedOut
                                | io::ErrorKind::WouldBlock
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        // A serial port's read timeout: nothing arrived. Stop once the
                        // link is gone (the send below would fail then).
                        if events.send(Event::Bytes(Vec::new())).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => Event::Failed(e),
                };
                let end = !matches!(ev, Event::Bytes(_));
                if events.send(ev).is_err() || end {
                    return;
                }
            }
        });
        Link {
            name: name.into(),
            tx: Box::new(writer),
            rx,
            closed: None,
            on_close: None,
        }
    }

    /// Sets what to ask for the reason when the stream ends.
    pub fn on_close(mut self, f: impl FnMut() -> String + Send + 'static) -> Link {
        self.on_close = Some(Box::new(f));
        self
    }

    /// What the device is (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `bytes`, all of them, and flushes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tx.write_all(bytes)?;
        self.tx.flush()
    }

    /// Waits until `deadline` for bytes.
    pub fn recv(&mut self, deadline: Instant) -> Recv {
        if let Some(why) = &self.closed {
            return Recv::Closed(why.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match self.rx.recv_timeout(left) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => return Recv::Timeout,
                Err(RecvTimeoutError::Disconnected) => Event::Closed,
            };
            let why = match ev {
                Event::Bytes(b) if b.is_empty() => {
                    if Instant::now() >= deadline {
                        return Recv::Timeout;
                    }
                    continue;
                }
                Event::Bytes(b) => return Recv::Bytes(b),
                Event::Closed => "the connection was closed".to_string(),
                Event::Failed(e) => format!("reading failed: {e}"),
            };
            let why = match self.on_close.as_mut() {
                Some(f) => {
                    // Give a process that closed its end a moment to exit, so that its
                    // status is known.
                    thread::sleep(Duration::from_millis(200));
                    format!("{why} ({})", f())
                }
                None => why,
            };
            self.closed = Some(why.clone());
            return Recv::Closed(why);
        }
    }

    /// Discards whatever arrives until the line has been quiet for `quiet` (at most
    /// until `limit` has passed): stale answers of an earlier, interrupted session.
    /// Returns the number of bytes dropped.
    pub fn drain(&mut self, quiet: Duration, limit: Duration) -> usize {
        let end = Instant::now() + limit;
        let mut dropped = 0;
        loop {
            let now = Instant::now();
            if now >= end {
                return dropped;
            }
            match self.recv((now + quiet).min(end)) {
                Recv::Bytes(b) => dropped += b.len(),
                Recv::Timeout | Recv::Closed(_) => return dropped,
            }
        }
    }
}
