//! A device under qemu to talk to: UART0 on a local TCP socket, the log kept.
//!
//! qemu connects to a listener of ours (`-serial tcp:127.0.0.1:PORT`), so no port is
//! guessed, with `nodelay=on`: qemu writes the UART's bytes one by one, and with Nagle's
//! algorithm each answer would wait for the host's delayed ACK (many times slower;
//! docs/device.md). qemu's stdout (the firmware's log: defmt frames, decoded with the
//! ELF) and stderr are kept as text (the last few KiB) for the error message when the
//! firmware dies.

use super::Launch;
use crate::defmt_log;
use crate::link::Link;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long qemu may take to connect its UART (a loaded machine boots slowly).
const CONNECT: Duration = Duration::from_secs(20);

/// Bytes of qemu's output kept.
const KEEP: usize = 4096;

/// A running qemu with its UART connected; killed when dropped.
pub struct Qemu {
    child: Arc<Mutex<Child>>,
    output: Arc<Mutex<Vec<u8>>>,
    /// Reads the log until qemu ends; joined on drop, so that a printed log is complete
    /// before whatever the caller prints next.
    log: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Qemu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qemu").finish_non_exhaustive()
    }
}

impl Launch {
    /// Starts the program with its UART on a local socket; returns qemu and the link to
    /// the UART.
    ///
    /// Errors: the ELF cannot be read; qemu cannot start, exits, or does not connect
    /// within 20 s.
    pub fn connect(&self) -> Result<(Qemu, Link), String> {
        let elf = self.elf_bytes()?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("cannot listen on a local port for qemu's UART: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on a local port: {e}"))?
            .port();
        let serial = format!("tcp:127.0.0.1:{port},nodelay=on");
        let mut child = self.spawn(&serial, Stdio::piped())?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let print = self.print_log;
        let log = child.stdout.take().map(|pipe| {
            let output = Arc::clone(&output);
            std::thread::spawn(move || keep_log(&elf, pipe, output, print))
        });
        if let Some(pipe) = child.stderr.take() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || keep_tail(pipe, output));
        }
        let qemu = Qemu {
            child: Arc::new(Mutex::new(child)),
            output,
            log,
        };
        let stream = qemu.accept(&listener)?;
        let reader = stream
            .try_clone()
            .map_err(|e| format!("cannot use the socket to qemu: {e}"))?;
        let _ = stream.set_nodelay(true);
        let child = Arc::clone(&qemu.child);
        let output = Arc::clone(&qemu.output);
        let link = Link::new(format!("qemu {}", self.machine.name()), reader, stream)
            .on_close(move || describe(&child, &output));
        Ok((qemu, link))
    }
}

impl Qemu {
    fn accept(&self, listener: &TcpListener) -> Result<TcpStream, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot poll the local port: {e}"))?;
        let deadline = Instant::now() + CONNECT;
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)
                        .map_err(|e| format!("cannot use the socket to qemu: {e}"))?;
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("qemu did not connect its UART: {e}")),
            }
            if let Ok(mut c) = self.child.lock() {
                if let Ok(Some(_)) = c.try_wait() {
                    drop(c);
                    return Err(format!(
                        "qemu exited before connecting its UART ({})",
                        describe(&self.child, &self.output)
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "qemu did not connect its UART within {} s",
                    CONNECT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills qemu (the device "loses power"); the session then fails with
    /// [`crate::client::DeviceError::Closed`].
    pub fn kill(&self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// qemu's exit status and last output, as one line.
    pub fn describe(&self) -> String {
        describe(&self.child, &self.output)
    }

    /// qemu's output so far, as text (the last few KiB): the firmware's decoded log and
    /// qemu's own messages.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        if let Some(t) = self.log.take() {
            let _ = t.join();
        }
    }
}

/// Keeps the firmware's log (qemu's stdout) decoded, one line per message, and prints
/// each line too if `print`; if the ELF's defmt table cannot be read, says so and keeps
/// the raw bytes instead (qemu must never block on a full pipe).
fn keep_log(elf: &[u8], mut pipe: impl Read, out: Arc<Mutex<Vec<u8>>>, print: bool) {
    // One append per line: qemu's stderr, kept in the same buffer, cannot split it.
    let decoded = defmt_log::decode(elf, &mut pipe, |line| {
        if print {
            println!("{line}");
        }
        append(&out, format!("{line}\n").as_bytes())
    });
    if let Err(e) = decoded {
        let note = format!("(the firmware's log cannot be decoded: {e})");
        if print {
            println!("{note}");
        }
        append(&out, format!("{note}\n").as_bytes());
        keep_tail(pipe, out);
    }
}

fn keep_tail(mut pipe: impl Read, out: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            return;
        }
        append(&out, &buf[..n]);
    }
}

/// Appends to the kept output, dropping its oldest bytes past [`KEEP`].
fn append(out: &Mutex<Vec<u8>>, bytes: &[u8]) {
    if let Ok(mut o) = out.lock() {
        o.extend_from_slice(bytes);
        if o.len() > KEEP {
            let cut = o.len() - KEEP;
            o.drain(..cut);
        }
    }
}

/// qemu's exit status and last output, as one line.
fn describe(child: &Mutex<Child>, output: &Mutex<Vec<u8>>) -> String {
    let status = match child.lock().map(|mut c| c.try_wait()) {
        Ok(Ok(Some(s))) => match s.code() {
            Some(c) => format!("qemu exited with status {c}"),
            None => "qemu was killed".to_string(),
        },
        _ => "qemu is still running".to_string(),
    };
    let text = output
        .lock()
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        status
    } else {
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        format!("{status}; last output: {tail}")
    }
}
