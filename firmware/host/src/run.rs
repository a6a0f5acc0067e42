//! `run ELF --machine M [--serial SPEC]`: the program under qemu, its defmt log decoded
//! line by line on stdout, qemu's exit status (the program's semihosting exit status) as
//! this command's. `.cargo/config.toml`'s runner (`qemu-run.sh`) and `run-tests.sh` use it.
//!
//! `decode ELF [LOG]`: decodes a raw log captured earlier (a file, or stdin without
//! `LOG`), e.g. qemu's stdout or `-chardev file` of `-semihosting-config ...,chardev=`.

use crate::{defmt_log, flag};
use std::io::Write;
use std::process::{Child, Command, ExitCode, Stdio};

/// The qemu CPU of a machine.
pub fn cpu(machine: &str) -> Result<&'static str, String> {
    match machine {
        "mps2-an386" => Ok("cortex-m4"),
        "microbit" => Ok("cortex-m0"),
        m => Err(format!("unknown machine {m} (mps2-an386 or microbit)")),
    }
}

/// The arguments of `args` that are neither a `--flag` of `flags` nor a flag's value.
fn positional<'a>(args: &'a [String], flags: &[&str]) -> Result<Vec<&'a str>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if flags.contains(&a) {
            i += 2;
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

/// Starts `elf` on `machine` as every program here runs it: UART0 on `serial` (a qemu
/// `-serial` spec), `-icount shift=0` (one instruction per ns: SysTick counts
/// instructions), semihosting on (the exit status and the defmt log, on the piped stdout).
pub fn qemu(machine: &str, cpu: &str, serial: &str, elf: &str) -> Result<Child, String> {
    Command::new("qemu-system-arm")
        .args(["-machine", machine, "-cpu", cpu])
        .args(["-display", "none", "-monitor", "none", "-serial", serial])
        .args(["-icount", "shift=0"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .args(["-kernel", elf])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-arm: {e}"))
}

pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let usage = "usage: hvae-firmware-host run ELF --machine mps2-an386|microbit [--serial SPEC]";
    let pos = positional(args, &["--machine", "--serial"])?;
    let [elf] = pos[..] else {
        // cargo passes the program's arguments after the ELF: the firmware takes none.
        return Err(format!(
            "{usage} (one ELF; the firmware takes no arguments, got {pos:?})"
        ));
    };
    let machine = flag(args, "--machine").ok_or(usage)?;
    let cpu = cpu(machine)?;
    // The UART (the protocol) is disconnected unless asked for, e.g. `--serial
    // tcp:127.0.0.1:PORT`: qemu's stdout carries the log only.
    let serial = flag(args, "--serial").unwrap_or("null");
    let bytes = std::fs::read(elf).map_err(|e| format!("{elf}: {e}"))?;
    let mut qemu = qemu(machine, cpu, serial, elf)?;
    let log = qemu.stdout.take().ok_or("qemu's stdout")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let decoded = defmt_log::decode(&bytes, log, |l| print_line(&mut out, l));
    drop(out);
    if let Err(e) = decoded {
        let _ = qemu.kill();
        let _ = qemu.wait();
        return Err(format!("{elf}: {e}"));
    }
    let status = qemu.wait().map_err(|e| format!("qemu: {e}"))?;
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!("qemu was killed ({status})");
            ExitCode::FAILURE
        }
    })
}

pub fn decode(args: &[String]) -> Result<(), String> {
    let pos = positional(args, &[])?;
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
