//! Build configuration of the firmware:
//!
//! - the board, from the target: `memory.x` (and an empty `device.x`, see
//!   `rt::__INTERRUPTS`) on the linker's search path and
//!   `cfg(board = "...")` for the drivers;
//!   - `thumbv7em-none-eabihf`: Cortex-M4F, qemu `mps2-an386` (`memory-mps2-an386.x`);
//!   - `thumbv6m-none-eabi`: Cortex-M0, qemu `microbit` (`memory-microbit.x`);
//! - the compiled-in models, written as Rust sources from the committed weight blobs by
//!   the core's `hvae::infer::exported::rust_source` (what `hvae export --format rust`
//!   writes), which the firmware `include!`s:
//!   - `$OUT_DIR/model.rs`: the blob named by the environment variable `HVAE_MODEL` (a
//!     `.hvae` weight blob; or an `hvae export --format rust` file, a name ending in
//!     `.rs`, copied as it is; a relative path is taken from this directory), else
//!     `model/digits.hvae`;
//!   - `$OUT_DIR/model_int8.rs`: `model/digits_int8.hvae`, the int8 model;
//!   - `$OUT_DIR/model_m0.rs`: `model/digits_m0.hvae`, `adapt`'s model.
//!
//!   A blob that is not valid fails the build with the blob reader's error.
use std::{env, fs, path::Path, path::PathBuf};

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

    println!("cargo:rerun-if-env-changed=HVAE_MODEL");
    let main = env::var_os("HVAE_MODEL").filter(|p| !p.is_empty());
    let main = main
        .as_deref()
        .map_or(Path::new("model/digits.hvae"), Path::new);
    let text = if main.extension().is_some_and(|e| e == "rs") {
        String::from_utf8(read(main)).unwrap_or_default()
    } else {
        source_of(main)
    };
    if !text.contains("hvae::exported_model!") {
        panic!(
            "{}: not an f32 model (an f32 weight blob, or an `hvae export --format rust` file of one)",
            main.display()
        );
    }
    write(&out.join("model.rs"), &text);
    write(
        &out.join("model_int8.rs"),
        &source_of(Path::new("model/digits_int8.hvae")),
    );
    write(
        &out.join("model_m0.rs"),
        &source_of(Path::new("model/digits_m0.hvae")),
    );
}

/// The bytes of `path` (relative: from this directory); a change to it reruns the build
/// script.
fn read(path: &Path) -> Vec<u8> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let path = manifest.join(path);
    println!("cargo:rerun-if-changed={}", path.display());
    fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The Rust source of the weight blob at `blob`; its header comment names the blob as
/// given.
fn source_of(blob: &Path) -> String {
    hvae::infer::exported::rust_source(&read(blob), &blob.display().to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", blob.display()))
}

/// Writes `text` to `out`.
fn write(out: &Path, text: &str) {
    fs::write(out, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
