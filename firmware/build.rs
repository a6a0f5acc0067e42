//! Build configuration of the firmware:
//!
//! - the board, from the target: `memory.x` (and an empty `device.x`, see
//!   `rt::__INTERRUPTS`) on the linker's search path and
//!   `cfg(board = "...")` for the drivers;
//!   - `thumbv7em-none-eabihf`: Cortex-M4F, qemu `mps2-an386` (`memory-mps2-an386.x`);
//!   - `thumbv6m-none-eabi`: Cortex-M0, qemu `microbit` (`memory-microbit.x`);
//! - the compiled-in model: the file named by the environment variable `HVAE_MODEL_RS`
//!   (an `hvae export --format rust` file; a relative path is taken from this
//!   directory), else `model/digits.rs`, copied to `$OUT_DIR/model.rs`, which the
//!   firmware `include!`s.
use std::{env, fs, path::PathBuf};

fn main() {
    let target = env::var("TARGET").unwrap_or_default();
    let (board, file) = if target.starts_with("thumbv6m") {
        ("microbit", "memory-microbit.x")
    } else {
        ("mps2_an386", "memory-mps2-an386.x")
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy(file, out.join("memory.x")).expect("copy memory.x");
    // cortex-m-rt's `device` feature includes `device.x` (a device crate's interrupt
    // names); the firmware names none: its handlers are all the default one.
    fs::write(out.join("device.x"), "/* no device interrupt names */\n").expect("write device.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo::rustc-check-cfg=cfg(board, values(\"mps2_an386\", \"microbit\"))");
    println!("cargo:rustc-cfg=board=\"{board}\"");
    println!("cargo:rerun-if-changed={file}");
    println!("cargo:rerun-if-changed=build.rs");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-env-changed=HVAE_MODEL_RS");
    let model = match env::var_os("HVAE_MODEL_RS").filter(|p| !p.is_empty()) {
        Some(p) => manifest.join(p),
        None => manifest.join("model/digits.rs"),
    };
    println!("cargo:rerun-if-changed={}", model.display());
    let text = fs::read_to_string(&model).unwrap_or_else(|e| {
        panic!(
            "HVAE_MODEL_RS / model/digits.rs: cannot read {}: {e}",
            model.display()
        )
    });
    if !text.contains("hvae::exported_model!") {
        panic!(
            "{} is not an `hvae export --format rust` file",
            model.display()
        );
    }
    fs::write(out.join("model.rs"), text).expect("write $OUT_DIR/model.rs");
}
