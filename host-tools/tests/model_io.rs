//! Model files: round trip, atomic save, and one-line errors for damaged or foreign files.

mod common;

use hvae::Shape;
use hvae_host::model_io::{self, ModelFileErrorKind};

#[test]
fn save_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = common::model(Shape::new(5, &[7, 3], 3, 2), 1);
    let p = dir.path().join("m.hvae");
    let crc = model_io::save(&p, &m).unwrap();
    let l = model_io::load(&p).unwrap();
    assert_eq!(l.model, m);
    assert_eq!(l.crc, crc);
    assert_eq!(l.bytes, hvae::store::blob::blob_len(m.shape()));
    // Same bytes as the core's writer.
    let core = common::write_model(dir.path(), "core.hvae", &m);
    assert_eq!(std::fs::read(core).unwrap(), std::fs::read(&p).unwrap());
    // Only the model file is left in the directory besides the core's copy.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

fn err_of(bytes: &[u8]) -> String {
    common::load_error("x.hvae", bytes, model_io::load).1
}

#[test]
fn damaged_and_foreign_files() {
    let m = common::model(Shape::new(4, &[3], 2, 2), 2);
    let good = model_io::to_bytes(&m).unwrap();

    assert!(err_of(b"").ends_with("weight blob is truncated"));
    assert!(err_of(b"PK\x03\x04 a zip file").ends_with("not an hvae weight blob (bad magic)"));
    assert!(err_of(&good[..good.len() - 1]).contains("truncated"));

    let mut flipped = good.clone();
    flipped[60] ^= 0x10;
    assert!(err_of(&flipped).contains("CRC mismatch"));

    let mut longer = good.clone();
    longer.push(0);
    assert!(err_of(&longer).contains("trailing bytes"));

    let mut version = good.clone();
    version[4] = 9;
    assert!(err_of(&version).contains("unsupported weight blob version 9"));
}

#[test]
fn missing_file() {
    common::assert_missing_file("/no/such.hvae", model_io::load, |e| {
        matches!(e.kind, ModelFileErrorKind::NotFound)
    });
}

#[test]
fn saving_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = common::model(Shape::new(4, &[3], 2, 2), 3);
    let e = model_io::save(&dir.path().join("nope/m.hvae"), &m).unwrap_err();
    assert!(e.to_string().starts_with("cannot write"), "{e}");
}
