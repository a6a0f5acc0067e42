//! The firmware under qemu: build it with cargo, start `qemu-system-arm` with the board's
//! UART on a local TCP socket, stop it when done.
//!
//! The UART is put on a socket rather than on qemu's stdio because stdio carries the
//! firmware's semihosting output (its defmt log, exit messages), and because
//! `-nographic` multiplexes the monitor onto stdio, where `0x01` (Ctrl-A) — a byte
//! frames contain — is an escape. qemu connects to a listener of ours
//! (`-serial tcp:127.0.0.1:PORT`), so no port is guessed, with `nodelay=on`: qemu
//! writes the UART's bytes one by one, and with Nagle's algorithm each answer would
//! wait for the host's delayed ACK (many times slower; docs/device.md). qemu's stdout
//! (the firmware's log: defmt frames, decoded with the ELF by [`super::defmt_log`]) and
//! stderr are kept as text (the last few KiB) for the error message when the firmware
//! dies.

use super::defmt_log;
use super::link::Link;
use std::io::{BufRead, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The emulated boards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// Cortex-M4F on `mps2-an386`.
    Mps2An386,
    /// Cortex-M0 on `microbit`.
    Microbit,
}

impl Machine {
    /// Parses `mps2-an386` or `microbit`.
    pub fn parse(s: &str) -> Option<Machine> {
        match s {
            "mps2-an386" | "mps2" | "m4" => Some(Machine::Mps2An386),
            "microbit" | "m0" => Some(Machine::Microbit),
            _ => None,
        }
    }

    /// qemu's machine name.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Mps2An386 => "mps2-an386",
            Machine::Microbit => "microbit",
        }
    }

    /// qemu's CPU name.
    pub fn cpu(self) -> &'static str {
        match self {
            Machine::Mps2An386 => "cortex-m4",
            Machine::Microbit => "cortex-m0",
        }
    }

    /// The Rust target of the firmware.
    pub fn target(self) -> &'static str {
        match self {
            Machine::Mps2An386 => "thumbv7em-none-eabihf",
            Machine::Microbit => "thumbv6m-none-eabi",
        }
    }
}

/// The firmware crate of this repository.
pub fn default_firmware_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("firmware"))
        .unwrap_or_else(|| PathBuf::from("firmware"))
}

/// True when `qemu-system-arm` can be started.
pub fn qemu_available() -> bool {
    Command::new("qemu-system-arm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Builds program `bin` of the firmware crate in `dir` for `machine` (release), with
/// `envs` added to cargo's environment; returns the ELF's path (from cargo's JSON
/// messages, so `CARGO_TARGET_DIR` and the like are honoured).
pub fn build_firmware(
    dir: &Path,
    bin: &str,
    machine: Machine,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Result<PathBuf, String> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(format!("no firmware crate at {}", dir.display()));
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--bin", bin, "--target", machine.target()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Settings of an enclosing cargo (when run from `cargo test`) are not the firmware's.
    for v in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build the firmware: {e}"))?;
    let mut elf = None;
    for line in out.stdout.lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == bin {
            if let Some(p) = v["executable"].as_str() {
                elf = Some(PathBuf::from(p));
            }
        }
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = last[last.len().saturating_sub(3)..].join(" | ");
        return Err(format!(
            "building the firmware program '{bin}' for {} failed: {tail}",
            machine.target()
        ));
    }
    elf.ok_or_else(|| format!("cargo built no program '{bin}' in {}", dir.display()))
}

/// A running qemu.
pub struct Qemu {
    child: Arc<Mutex<Child>>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl std::fmt::Debug for Qemu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qemu").finish_non_exhaustive()
    }
}

/// Bytes of qemu's output kept.
const KEEP: usize = 4096;

impl Qemu {
    /// Starts `elf` on `machine`; returns qemu and the link to the firmware's UART.
    /// `extra` arguments are added to qemu's (e.g. `-icount shift=0`).
    pub fn start(elf: &Path, machine: Machine, extra: &[&str]) -> Result<(Qemu, Link), String> {
        // The log's format strings are in the ELF.
        let elf_bytes =
            std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("cannot listen on a local port for qemu's UART: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on a local port: {e}"))?
            .port();
        let mut child = Command::new("qemu-system-arm")
            .args(["-machine", machine.name(), "-cpu", machine.cpu()])
            .args(["-display", "none", "-monitor", "none"])
            .args(["-serial", &format!("tcp:127.0.0.1:{port},nodelay=on")])
            .args(["-semihosting-config", "enable=on,target=native"])
            .args(extra)
            .arg("-kernel")
            .arg(elf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-arm: {e}"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stdout.take() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || keep_log(&elf_bytes, pipe, output));
        }
        if let Some(pipe) = child.stderr.take() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || keep_tail(pipe, output));
        }
        let child = Arc::new(Mutex::new(child));
        let qemu = Qemu { child, output };
        let stream = qemu.accept(&listener)?;
        let reader = stream
            .try_clone()
            .map_err(|e| format!("cannot use the socket to qemu: {e}"))?;
        let _ = stream.set_nodelay(true);
        let child = Arc::clone(&qemu.child);
        let output = Arc::clone(&qemu.output);
        let link = Link::new(format!("qemu {}", machine.name()), reader, stream)
            .on_close(move || describe(&child, &output));
        Ok((qemu, link))
    }

    fn accept(&self, listener: &TcpListener) -> Result<TcpStream, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot poll the local port: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
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
                return Err("qemu did not connect its UART within 10 s".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills qemu (the device "loses power"); the session then fails with
    /// [`super::DeviceError::Closed`].
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
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Keeps the firmware's log (qemu's stdout) decoded, one line per message; if the ELF's
/// defmt table cannot be read, says so and keeps the raw bytes instead (qemu must never
/// block on a full pipe).
fn keep_log(elf: &[u8], mut pipe: impl Read, out: Arc<Mutex<Vec<u8>>>) {
    // One append per line: qemu's stderr, kept in the same buffer, cannot split it.
    let decoded = defmt_log::decode(elf, &mut pipe, |line| {
        append(&out, format!("{line}\n").as_bytes())
    });
    if let Err(e) = decoded {
        append(
            &out,
            format!("(the firmware's log cannot be decoded: {e})\n").as_bytes(),
        );
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
