//! The firmware of this repository, built with cargo for a board (`hvae validate`,
//! `device-train` and `demo` build the program they talk to unless given an ELF).

use hvae_devkit::Machine;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The firmware crate of this repository.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("firmware"))
        .unwrap_or_else(|| PathBuf::from("firmware"))
}

/// Builds program `bin` of the firmware crate in `dir` for `machine` (release), with
/// `envs` added to cargo's environment; returns the ELF's path (from cargo's JSON
/// messages, so `CARGO_TARGET_DIR` and the like are honoured).
pub fn build(
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
