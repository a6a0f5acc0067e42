//! Host side of the firmware's tests (run by `firmware/run-tests.sh`).
//!
//! ```text
//! hvae-firmware-host golden MODEL.hvae DATA.csv[.gz] OUT.rs
//!     inputs and the core's outputs for them, as a Rust file for `selftest` and `bench`
//! hvae-firmware-host size ELF...
//!     flash (vector table + .text + .rodata + .data image) and static RAM of each ELF
//! hvae-firmware-host panics [--deny-ours] ELF...
//!     the panic sites linked into each image (every `core::panic::Location` in
//!     `.rodata`), counted per source file: this project's (core, firmware), the
//!     standard library's own (`/rustc/...`, not attributed to a caller) and the
//!     dependencies'; `--deny-ours` fails if an image has one of the first two kinds
//! hvae-firmware-host probe ELF --machine mps2-an386|microbit --blob MODEL.hvae
//!         [--flash-budget BYTES] [--ram-budget BYTES]
//!     starts `cluster` under qemu and runs the conformance checks (`probe/checks.rs`),
//!     each a function printing its name and ok/FAIL: every answer over the emulated
//!     UART (results against the core on the host, typed errors for bad input and bad
//!     frames, weight loading all or nothing, reading weights back), then the device's
//!     own flash/RAM/stack report against the ELF and the budgets (the firmware's log,
//!     decoded, is printed among the checks)
//! hvae-firmware-host run ELF --machine mps2-an386|microbit [--serial SPEC]
//!         [--timeout SECS] [--raw]
//!     runs the program under qemu (`-icount shift=0`, semihosting; the UART on `SPEC`,
//!     default `null`; killed after `SECS`) and prints its defmt log decoded, one line
//!     per message (`--raw`: the frames undecoded); the exit status is qemu's, i.e. the
//!     program's semihosting exit status
//! hvae-firmware-host decode ELF [LOG]
//!     decodes a raw defmt log (a file, or stdin) with the ELF's format strings
//! ```
//! Exit status 0 when everything checked out, 1 otherwise (with the reason on stderr);
//! `run`: the program's.

mod elf;
mod golden;
mod probe;
mod run;

// The decoder shared with `hvae` (`host-tools/devkit`).
use hvae_devkit::defmt_log;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("golden") => golden::run(&args[1..]),
        Some("size") => elf::run(&args[1..]),
        Some("panics") => elf::panics(&args[1..]),
        Some("probe") => probe::run(&args[1..]),
        Some("decode") => run::decode(&args[1..]),
        Some("run") => match run::run(&args[1..]) {
            Ok(status) => return status,
            Err(e) => Err(e),
        },
        _ => Err(
            "usage: hvae-firmware-host golden|size|panics|probe|run|decode ... (see the source's docs)"
                .into(),
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The value following `--name` in `args`.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Reads a weight blob and returns its shape, all parameters and CRC.
pub fn read_blob(path: &str) -> Result<(hvae::Shape, Vec<f32>, u32), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let shape = hvae::store::blob::read_shape(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let mut params = vec![0.0f32; shape.param_len()];
    let crc = hvae::store::blob::read_params(&bytes, &shape, &mut params)
        .map_err(|e| format!("{path}: {e}"))?;
    Ok((shape, params, crc))
}
