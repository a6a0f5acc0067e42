//! Puts this example's `memory.x` (flash shortened by the checkpoint pages) where the
//! linker looks first: the HAL ships a `memory.x` of the whole flash too. Writes the
//! compiled-in models' Rust sources from the committed weight blobs with the core's
//! writer (`hvae::infer::exported::rust_source`, what `hvae export --format rust`
//! writes): `$OUT_DIR/model.rs` from `model/acc.hvae` and `$OUT_DIR/model_int8.rs` from
//! `model/acc_int8.hvae`, which `src/main.rs` `include!`s. A blob that is not valid
//! fails the build with the blob reader's error.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    for (blob, source) in [
        ("model/acc.hvae", "model.rs"),
        ("model/acc_int8.hvae", "model_int8.rs"),
    ] {
        println!("cargo:rerun-if-changed={blob}");
        let bytes = fs::read(blob).unwrap_or_else(|e| panic!("cannot read {blob}: {e}"));
        let text = hvae::infer::exported::rust_source(&bytes, blob)
            .unwrap_or_else(|e| panic!("{blob}: {e}"));
        fs::write(out.join(source), text).expect("OUT_DIR is writable");
    }
}
