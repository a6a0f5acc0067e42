//! The options of every command that talks to a device (`hvae validate`,
//! `hvae device-train`): which firmware runs under qemu, a serial port's baud rate and
//! how long to wait for an answer, and the one place that opens the device with them.

use crate::device::{self, DeviceSpec, FirmwareOptions, Opened, Timeouts};
use crate::Error;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the device (flattened into each device command's arguments).
#[derive(Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Run this firmware ELF under qemu instead of building the command's program.
    #[arg(long, value_name = "ELF")]
    pub firmware: Option<PathBuf>,
    /// The firmware crate to build (default: the repository's `firmware/`).
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// Baud rate of a serial device.
    #[arg(long, default_value_t = 115_200, value_name = "BAUD")]
    pub baud: u32,
    /// Seconds to wait for one answer before calling the device stalled (a training
    /// batch's answer has its own, longer wait).
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    pub timeout: f64,
}

impl ConnectionArgs {
    /// Opens `device` running the firmware program `bin` (built unless `--firmware`
    /// names an ELF; `host` needs neither), with `--timeout` as the answer's wait and
    /// the other waits of `waits`. A `--timeout` that is not a positive number of
    /// seconds is [`Error::BadInput`] before anything starts.
    pub fn open(&self, device: &DeviceSpec, bin: &str, waits: Timeouts) -> Result<Opened, Error> {
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            return Err(Error::BadInput(format!(
                "--timeout must be a positive number of seconds, got {}",
                self.timeout
            )));
        }
        let timeouts = Timeouts {
            answer: Duration::from_secs_f64(self.timeout),
            ..waits
        };
        let fw = FirmwareOptions {
            elf: self.firmware.clone(),
            dir: self.firmware_dir.clone(),
            env: Vec::new(),
        };
        device::open(device, bin, &fw, self.baud, timeouts).map_err(Error::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(timeout: f64) -> ConnectionArgs {
        ConnectionArgs {
            firmware: None,
            firmware_dir: None,
            baud: 115_200,
            timeout,
        }
    }

    #[test]
    fn a_timeout_that_is_not_a_positive_number_is_refused_before_opening() {
        let host = DeviceSpec::parse("host").unwrap();
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            match connection(t).open(&host, device::LEARN_BIN, Timeouts::default()) {
                Err(Error::BadInput(m)) => assert!(m.contains("--timeout"), "{m}"),
                Err(e) => panic!("{t}: {e}"),
                Ok(_) => panic!("{t}: opened"),
            }
        }
    }

    #[test]
    fn the_host_engine_opens_and_answers() {
        let host = DeviceSpec::parse("host").unwrap();
        let mut opened = connection(0.5)
            .open(&host, device::LEARN_BIN, Timeouts::default())
            .unwrap();
        let info = opened.device.info().unwrap();
        assert!(
            info.capabilities & hvae::protocol::CAP_TRAIN != 0,
            "{info:?}"
        );
    }
}
