//! `hvae demo` on a machine without qemu: the host part runs, the device step says
//! plainly why it is skipped, and the command succeeds.

mod common;

#[test]
fn demo_without_qemu_says_so_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = assert_cmd::Command::cargo_bin("hvae")
        .unwrap()
        .args(["demo", "--quiet", "--out-dir"])
        .arg(dir.path())
        // No qemu-system-arm on this PATH.
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stdout = common::success_stdout(&out);
    assert!(
        stdout.contains("== 4. run on the emulated device"),
        "{stdout}"
    );
    assert!(
        stdout.contains("skipped: qemu-system-arm is not installed"),
        "{stdout}"
    );
    assert!(dir.path().join("digits_model.rs").is_file());
}
