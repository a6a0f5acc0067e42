//! Talking to a device that runs the firmware: under qemu, or a board on a serial port.
//!
//! The client, the link, the qemu launcher and the log decoder are the device toolkit
//! shared with the firmware's host tool ([`hvae_devkit`], re-exported here); this module
//! adds what only `hvae` needs.
//!
//! | module | job |
//! |---|---|
//! | [`link`] | a byte stream with receive timeouts (reader thread + channel) |
//! | [`client`] | requests and responses: framing, re-sync, weights in chunks and pages, faults as one-line errors |
//! | [`qemu`] | start a firmware ELF under qemu, with its UART on a local socket |
//! | [`defmt_log`] | the firmware's defmt log as text lines |
//! | [`firmware`] | build this repository's firmware for a board |
//! | [`serial`] | a serial port |
//! | [`sim`] | a simulated inference device in a thread, with injectable faults (tests) |
//! | [`learn_host`] | the core's device engine ([`hvae::device`]) on the host: the reference of `device-train`, a simulated learning device |

pub mod firmware;
pub mod learn_host;
pub mod serial;
pub mod sim;

pub use hvae_devkit::{client, defmt_log, link, qemu};
pub use hvae_devkit::{Device, DeviceError, DeviceSegment, Link, Timeouts};

use std::path::PathBuf;

/// Where the device is, as given on the command line (`--device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The firmware's engine ([`hvae::device`]) compiled for this machine, running the
    /// firmware's compiled-in model, over in-memory pipes: no emulator, the same bits.
    Host,
    /// The firmware under qemu on this machine.
    Qemu(qemu::Machine),
    /// A board on this serial port.
    Serial(String),
}

impl DeviceSpec {
    /// Parses `host`, `qemu`, `qemu:mps2-an386`, `qemu:microbit` or `serial:PATH`.
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        let bad = || {
            format!(
                "unknown device '{s}': expected host, qemu, qemu:mps2-an386, qemu:microbit or \
                 serial:PATH"
            )
        };
        if s == "host" {
            return Ok(DeviceSpec::Host);
        }
        if s == "qemu" {
            return Ok(DeviceSpec::Qemu(qemu::Machine::Mps2An386));
        }
        if let Some(m) = s.strip_prefix("qemu:") {
            return qemu::Machine::parse(m)
                .map(DeviceSpec::Qemu)
                .ok_or_else(bad);
        }
        if let Some(p) = s.strip_prefix("serial:") {
            if p.is_empty() {
                return Err(bad());
            }
            return Ok(DeviceSpec::Serial(p.to_string()));
        }
        Err(bad())
    }
}

/// How to reach the firmware under qemu.
#[derive(Clone, Debug, Default)]
pub struct FirmwareOptions {
    /// A prebuilt ELF to run instead of building one.
    pub elf: Option<PathBuf>,
    /// The firmware crate (default: `firmware/` of this repository).
    pub dir: Option<PathBuf>,
    /// Extra environment for the firmware build (e.g. `HVAE_MODEL`, the weight blob to compile in).
    pub env: Vec<(String, std::ffi::OsString)>,
}

/// An open device: the session, and qemu if it runs there (stopped on drop).
pub struct Opened {
    /// The session.
    pub device: Device,
    /// The emulator, kept alive for the session.
    pub qemu: Option<qemu::Qemu>,
}

/// The firmware program of the `scratch` scenario (the scratch engine on the host).
pub const SCRATCH_BIN: &str = "learn_scratch";
/// The firmware program that adapts without a trainer (online k-means; the adapting
/// engine on the host): the one that learns on the Cortex-M0.
pub const ADAPT_BIN: &str = "adapt";
/// The firmware program that learns (every scope and optimiser).
pub const LEARN_BIN: &str = "learn";
/// The model compiled into [`ADAPT_BIN`] (under the firmware's directory): the digits
/// with 16 hidden units, whose weights and the engine fit the micro:bit's 16 KiB of RAM.
pub const ADAPT_MODEL: &str = "model/digits_m0.hvae";
/// The model compiled into every other program (under the firmware's directory).
pub const MODEL: &str = "model/digits.hvae";

/// The model compiled into firmware program `bin` (under the firmware's directory).
pub fn model_of(bin: &str) -> &'static str {
    if bin == ADAPT_BIN {
        ADAPT_MODEL
    } else {
        MODEL
    }
}

/// The learning program for `spec`: [`ADAPT_BIN`] on the micro:bit machine (16 KiB of
/// RAM: `learn` does not link there), [`LEARN_BIN`] elsewhere.
pub fn learn_program(spec: &DeviceSpec) -> &'static str {
    match spec {
        DeviceSpec::Qemu(qemu::Machine::Microbit) => ADAPT_BIN,
        _ => LEARN_BIN,
    }
}

/// Opens the device: the host engine (which serves every request, whatever `bin`), or
/// builds and starts program `bin` under qemu, or opens the serial
/// port at `baud`.
pub fn open(
    spec: &DeviceSpec,
    bin: &str,
    fw: &FirmwareOptions,
    baud: u32,
    timeouts: Timeouts,
) -> Result<Opened, String> {
    match spec {
        DeviceSpec::Host => {
            let dir = fw.dir.clone().unwrap_or_else(firmware::default_dir);
            let path = dir.join(model_of(bin));
            let m = crate::model_io::load(&path).map_err(|e| e.to_string())?;
            let link = if bin == SCRATCH_BIN {
                let m = crate::commands::scenario::scratch_model(&m).map_err(|e| e.to_string())?;
                learn_host::spawn(learn_host::scratch_learner(m.model, m.crc)?)
            } else if bin == ADAPT_BIN {
                learn_host::spawn(learn_host::adapt_learner(m.model, m.crc)?)
            } else {
                learn_host::spawn(learn_host::host_learner(m.model, m.crc)?)
            }
            .map_err(|e| format!("cannot start the host engine: {e}"))?;
            Ok(Opened {
                device: Device::new(link, timeouts),
                qemu: None,
            })
        }
        DeviceSpec::Serial(path) => Ok(Opened {
            device: Device::new(serial::open(path, baud)?, timeouts),
            qemu: None,
        }),
        DeviceSpec::Qemu(machine) => {
            if !qemu::available() {
                return Err(
                    "qemu-system-arm is not installed (install it, e.g. apt-get install \
                     qemu-system-arm)"
                        .to_string(),
                );
            }
            let elf = match &fw.elf {
                Some(e) => e.clone(),
                None => {
                    let dir = fw.dir.clone().unwrap_or_else(firmware::default_dir);
                    let env: Vec<(&str, &std::ffi::OsStr)> = fw
                        .env
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_os_str()))
                        .collect();
                    firmware::build(&dir, bin, *machine, &env)?
                }
            };
            let (q, link) = qemu::Launch::new(*machine, elf).connect()?;
            Ok(Opened {
                device: Device::new(link, timeouts),
                qemu: Some(q),
            })
        }
    }
}
