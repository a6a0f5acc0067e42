//! The one way this project starts `qemu-system-arm`: a firmware ELF on an emulated
//! board, semihosting on (the program's exit status, and its defmt log on qemu's
//! stdout). [`Launch`] holds the choices (board, ELF, `-icount`, a time limit) and
//! starts qemu three ways:
//!
//! | method | UART | stdout (the log) | for |
//! |---|---|---|---|
//! | [`Launch::run`] | a qemu `-serial` spec (`null`: disconnected) | decoded, line by line | a program that ends: selftest, bench, cargo's runner |
//! | [`Launch::run_raw`] | the same | the bytes as they come | checking that the log is defmt frames |
//! | [`Launch::connect`] | a local TCP socket, as a [`Link`](crate::link::Link) | decoded and kept ([`Qemu::output`]) | a device to talk to: `cluster`, `learn` |
//! | [`Launch::spawn`] | a qemu `-serial` spec | piped, for the caller | anything else, e.g. a log read while the program runs on |
//!
//! The UART is never put on qemu's stdio: stdio carries the semihosting output, and
//! `-nographic` multiplexes the monitor onto it, where `0x01` (Ctrl-A, a byte frames
//! contain) is an escape.

mod connected;

pub use connected::Qemu;

use crate::defmt_log;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The emulated boards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// Cortex-M4F on `mps2-an386`.
    Mps2An386,
    /// Cortex-M0 on `microbit`.
    Microbit,
}

impl Machine {
    /// Parses `mps2-an386` (or `mps2`, `m4`) or `microbit` (or `m0`).
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

/// True when `qemu-system-arm` can be started.
pub fn available() -> bool {
    Command::new("qemu-system-arm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A program to start under qemu, and how.
#[derive(Clone, Debug)]
pub struct Launch {
    machine: Machine,
    elf: PathBuf,
    icount: bool,
    limit: Option<Duration>,
    print_log: bool,
}

impl Launch {
    /// `elf` on `machine`, as fast as qemu goes, without a time limit.
    pub fn new(machine: Machine, elf: impl Into<PathBuf>) -> Launch {
        Launch {
            machine,
            elf: elf.into(),
            icount: false,
            limit: None,
            print_log: false,
        }
    }

    /// With `-icount shift=0`: every instruction takes 1 ns of virtual time, so SysTick
    /// counts instructions (bench) and runs are deterministic.
    pub fn icount(mut self) -> Launch {
        self.icount = true;
        self
    }

    /// Kills qemu once `limit` has passed ([`Launch::run`], [`Launch::run_raw`]): a hung
    /// program fails the run instead of stalling it.
    pub fn limit(mut self, limit: Duration) -> Launch {
        self.limit = Some(limit);
        self
    }

    /// [`Launch::connect`] also prints each line of the decoded log on stdout as it
    /// arrives (a test's log among its results).
    pub fn print_log(mut self) -> Launch {
        self.print_log = true;
        self
    }

    /// The board.
    pub fn machine(&self) -> Machine {
        self.machine
    }

    /// The program.
    pub fn elf(&self) -> &Path {
        &self.elf
    }

    /// The one qemu command line: the board, UART0 on `serial` (a qemu `-serial` spec),
    /// no display or monitor, semihosting to stdout, the ELF.
    fn command(&self, serial: &str) -> Command {
        let mut cmd = Command::new("qemu-system-arm");
        cmd.args(["-machine", self.machine.name(), "-cpu", self.machine.cpu()])
            .args(["-display", "none", "-monitor", "none", "-serial", serial])
            .args(["-semihosting-config", "enable=on,target=native"]);
        if self.icount {
            cmd.args(["-icount", "shift=0"]);
        }
        cmd.arg("-kernel")
            .arg(&self.elf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd
    }

    /// Starts qemu with UART0 on `serial`, stdout (the raw log) piped and `stderr` as
    /// given, and hands the process over: the caller reads the log, waits and kills.
    pub fn spawn(&self, serial: &str, stderr: Stdio) -> Result<Child, String> {
        self.command(serial)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-arm: {e}"))
    }

    /// The ELF's bytes (its defmt table decodes the log).
    fn elf_bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.elf).map_err(|e| format!("cannot read {}: {e}", self.elf.display()))
    }

    /// Runs the program to its end with UART0 on `serial` (`null`: disconnected), calls
    /// `line` with each line of its decoded log as it arrives, and returns qemu's exit
    /// status, i.e. the program's semihosting exit status. qemu's own messages go to
    /// this process's stderr.
    ///
    /// Errors: qemu cannot start; the log cannot be decoded (qemu is killed); the time
    /// limit passed.
    pub fn run(&self, serial: &str, mut line: impl FnMut(&str)) -> Result<ExitStatus, String> {
        let elf = self.elf_bytes()?;
        self.supervise(serial, |log| {
            defmt_log::decode(&elf, log, &mut line)
                .map_err(|e| format!("{}: {e}", self.elf.display()))
        })
    }

    /// Runs the program to its end like [`Launch::run`], copying its log to `out`
    /// undecoded: the defmt frames as qemu writes them.
    pub fn run_raw(&self, serial: &str, out: &mut impl Write) -> Result<ExitStatus, String> {
        self.supervise(serial, |log| {
            std::io::copy(log, out)
                .map(|_| ())
                .map_err(|e| format!("copying the log: {e}"))
        })
    }

    /// Starts qemu, hands its stdout to `read_log` (which reads to the end), then waits
    /// for qemu; kills it on a failed read or once the time limit has passed.
    fn supervise(
        &self,
        serial: &str,
        read_log: impl FnOnce(&mut dyn Read) -> Result<(), String>,
    ) -> Result<ExitStatus, String> {
        let mut child = self.spawn(serial, Stdio::inherit())?;
        let mut log = child.stdout.take().ok_or("qemu's stdout")?;
        let child = Arc::new(Mutex::new(child));
        let (done, finished) = mpsc::channel::<()>();
        let killed = Arc::new(Mutex::new(false));
        // The watchdog: the log reader blocks until qemu closes its stdout, so a hung
        // program is ended from another thread.
        let watchdog = self.limit.map(|limit| {
            let (child, killed) = (Arc::clone(&child), Arc::clone(&killed));
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
                    if let Ok(mut c) = child.lock() {
                        let _ = c.kill();
                    }
                    if let Ok(mut k) = killed.lock() {
                        *k = true;
                    }
                }
            })
        });
        let read = read_log(&mut log);
        let mut child = child.lock().map_err(|_| "qemu's handle".to_string())?;
        if read.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| format!("qemu: {e}"));
        drop(child);
        let _ = done.send(());
        if let Some(w) = watchdog {
            let _ = w.join();
        }
        read?;
        if killed.lock().map(|k| *k).unwrap_or(false) {
            let secs = self.limit.unwrap_or_default().as_secs_f64();
            return Err(format!(
                "{} did not end within {secs:.0} s: qemu was killed",
                self.elf.display()
            ));
        }
        status
    }
}
