//! `run ELF --machine M [--serial SPEC] [--timeout SECS] [--raw]`: the program under qemu
//! (`-icount shift=0`: SysTick counts instructions, runs are deterministic), its defmt
//! log decoded line by line on stdout (`--raw`: the frames as qemu writes them), qemu's
//! exit status (the program's semihosting exit status) as this command's.
//! `.cargo/config.toml`'s runner (`qemu-run.sh`) and `run-tests.sh` use it.
//!
//! `decode ELF [LOG]`: decodes a raw log captured earlier (a file, or stdin without
//! `LOG`), e.g. the output of `run --raw`.

use crate::{defmt_log, flag};
use hvae_devkit::{Launch, Machine};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// The board named by `--machine` in `args` (default `mps2-an386`).
pub fn machine(args: &[String]) -> Result<Machine, String> {
    let name = flag(args, "--machine").unwrap_or("mps2-an386");
    Machine::parse(name).ok_or_else(|| format!("unknown machine {name} (mps2-an386 or microbit)"))
}

/// The arguments of `args` that are neither a `--flag` of `valued` nor a flag's value,
/// nor a switch of `switches`.
fn positional<'a>(
    args: &'a [String],
    valued: &[&str],
    switches: &[&str],
) -> Result<Vec<&'a str>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if valued.contains(&a) {
            i += 2;
            continue;
        }
        if switches.contains(&a) {
            i += 1;
            continue;
        }
        if a.starts_with("--") {
            return Err(format!("unknown option {a}"));
        }
        out.push(a);
        i += 1;
    }
    Ok(out)
}

/// Prints one decoded line; a closed stdout (`| head`) ends the printing quietly.
fn print_line(out: &mut impl Write, text: &str) {
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let usage = "usage: hvae-firmware-host run ELF --machine mps2-an386|microbit \
                 [--serial SPEC] [--timeout SECS] [--raw]";
    let pos = positional(args, &["--machine", "--serial", "--timeout"], &["--raw"])?;
    let [elf] = pos[..] else {
        // cargo passes the program's arguments after the ELF: the firmware takes none.
        return Err(format!(
            "{usage} (one ELF; the firmware takes no arguments, got {pos:?})"
        ));
    };
    let mut launch = Launch::new(machine(args)?, elf).icount();
    if let Some(secs) = flag(args, "--timeout") {
        let secs: u64 = secs
            .parse()
            .map_err(|_| format!("--timeout {secs}: not a number of seconds"))?;
        launch = launch.limit(Duration::from_secs(secs));
    }
    // The UART (the protocol) is disconnected unless asked for, e.g. `--serial
    // tcp:127.0.0.1:PORT`: qemu's stdout carries the log only.
    let serial = flag(args, "--serial").unwrap_or("null");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let status = if args.iter().any(|a| a == "--raw") {
        launch.run_raw(serial, &mut out)
    } else {
        launch.run(serial, |l| print_line(&mut out, l))
    }?;
    let _ = out.flush();
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!("qemu was killed ({status})");
            ExitCode::FAILURE
        }
    })
}

pub fn decode(args: &[String]) -> Result<(), String> {
    let pos = positional(args, &[], &[])?;
    let (elf, log) = match pos[..] {
        [elf] => (elf, None),
        [elf, log] => (elf, Some(log)),
        _ => return Err("usage: hvae-firmware-host decode ELF [LOG] (stdin without LOG)".into()),
    };
    let bytes = std::fs::read(elf).map_err(|e| format!("{elf}: {e}"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match log {
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
            defmt_log::decode(&bytes, f, |l| print_line(&mut out, l))
        }
        None => defmt_log::decode(&bytes, std::io::stdin().lock(), |l| print_line(&mut out, l)),
    }
}
