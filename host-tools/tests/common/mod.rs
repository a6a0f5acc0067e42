//! Helpers shared by the integration tests: deterministic models and data files, and
//! runs of the `hvae` command.
#![allow(dead_code)]

use hvae::infer::model::{Model, VecModel};
use hvae::Shape;
use std::path::{Path, PathBuf};

/// Deterministic, finite, non-degenerate parameters for `shape`: a fixed hash of the
/// index mapped to [-0.5, 0.5), with the normalisation set to offset 0, scale 1.
pub fn params(shape: &Shape, salt: u64) -> Vec<f32> {
    let mut p: Vec<f32> = (0..shape.param_len() as u64)
        .map(|i| {
            // splitmix64 of (i, salt)
            let mut z = i.wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let d = shape.input;
    let no = shape.norm_offset();
    p[no..no + d].fill(0.0);
    p[no + d..no + 2 * d].fill(1.0);
    p
}

/// A model with [`params`].
pub fn model(shape: Shape, salt: u64) -> VecModel<f32> {
    Model::new(shape, params(&shape, salt)).expect("valid model")
}

/// Writes `model` as a blob with the core's writer and returns the path.
pub fn write_model(dir: &Path, name: &str, model: &VecModel<f32>) -> PathBuf {
    let shape = model.shape();
    let mut bytes = vec![0u8; hvae::store::blob::blob_len(shape)];
    let n = hvae::store::blob::write(shape, model.params(), &mut bytes).expect("blob");
    bytes.truncate(n);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// The shipped digits data.
pub fn digits_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz")
}

/// The `hvae` command of this package.
pub fn hvae() -> assert_cmd::Command {
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_hvae"))
}

/// A finished run of `hvae`: its exit status (-1 when killed by a signal) and output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `hvae` with `args` to the end.
pub fn run(args: &[&str]) -> Run {
    finish(hvae().args(args).output().unwrap())
}

/// Runs `hvae <command> --model <model>` with `rest` after them.
pub fn run_model(command: &str, model: &Path, rest: &[&str]) -> Run {
    let mut args = vec![command, "--model", s(model)];
    args.extend_from_slice(rest);
    run(&args)
}

/// Runs `hvae` with `args` and `input` on its standard input.
pub fn run_stdin(args: &[&str], input: Vec<u8>) -> Run {
    finish(hvae().args(args).write_stdin(input).output().unwrap())
}

fn finish(out: std::process::Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `adapt` program's settings in a drift scenario (`hvae device-train` arguments):
/// online k-means with the tracked normalisation, 300 samples of memory.
pub const ADAPT_SETTINGS: [&str; 6] = [
    "--scope",
    "segmenter-and-normalisation",
    "--optimiser",
    "online-k-means",
    "--memory",
    "300",
];

/// Skips a test of `kind` (`qemu`, `PyTorch`) for `why`, with a loud note: `None`.
/// Under CI (the `CI` environment variable) the test fails instead, so that CI cannot
/// skip it silently.
pub fn skip<T>(kind: &str, why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, so the {kind} tests must run, but: {why}");
    }
    eprintln!("\n***************************************************************");
    eprintln!("*** SKIPPED {kind} test: {why}");
    eprintln!("***************************************************************\n");
    None
}

/// The Python of the reference environment (`$HVAE_PYTHON`, else
/// `host-tools/reference/.venv`), or `None` outside CI when there is none: the test that
/// needs it for `what` is skipped, and says so. Under CI a missing Python fails the test.
pub fn reference_python(what: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HVAE_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/.venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: no Python for {what}: set HVAE_PYTHON or create {}",
        venv.display()
    );
    eprintln!(
        "SKIPPED: {what}: no HVAE_PYTHON and no host-tools/reference/.venv (python3 -m venv \
         host-tools/reference/.venv && host-tools/reference/.venv/bin/pip install -r \
         host-tools/reference/requirements.txt)"
    );
    None
}

/// Runs `cmd` to the end and returns its output; a failure fails the test with the
/// command's stderr.
pub fn output_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The stdout of a finished command; a failure fails the test with its stdout and
/// stderr.
pub fn success_stdout(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts a failure with exit status `code` and exactly one line on stderr, the tool's
/// error containing `needle` (no panic).
pub fn assert_one_line_error(r: &Run, code: i32, needle: &str) {
    assert_eq!(r.code, code, "stderr: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "stderr: {:?}", r.stderr);
    assert!(r.stderr.starts_with("hvae: error: "), "{}", r.stderr);
    assert!(r.stderr.contains(needle), "{:?} lacks {needle:?}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// Four well-separated von Mises-Fisher clusters in 12-D (600 labelled rows, seed 3),
/// written as `mix.csv` in `dir`.
pub fn four_cluster_csv(dir: &Path) -> PathBuf {
    let mix = hvae_host::synth::VmfMixture::new(12, 4, 600, 50.0, 3)
        .generate()
        .unwrap();
    let csv = dir.join("mix.csv");
    hvae_host::data::write_csv(&csv, &mix.data).unwrap();
    csv
}

/// Writes `bytes` as the file `name` in a fresh directory, opens it with `load`, which
/// must fail, and returns the error and its message, checked to be one line that names
/// the file first (the loaders' error contract).
pub fn load_error<T, E: std::fmt::Display>(
    name: &str,
    bytes: &[u8],
    load: impl FnOnce(&Path) -> Result<T, E>,
) -> (E, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let Err(e) = load(&p) else {
        panic!("{name} loaded: {:?}", String::from_utf8_lossy(bytes));
    };
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    assert!(msg.starts_with(&p.display().to_string()), "{msg}");
    (e, msg)
}

/// Opening the missing file `path` with `load` fails with an error `is_not_found`
/// accepts, whose message is the path and "no such file".
pub fn assert_missing_file<T, E: std::fmt::Display>(
    path: &str,
    load: impl FnOnce(&Path) -> Result<T, E>,
    is_not_found: impl FnOnce(&E) -> bool,
) {
    let Err(e) = load(Path::new(path)) else {
        panic!("{path} loaded");
    };
    assert!(is_not_found(&e), "{e}");
    assert_eq!(e.to_string(), format!("{path}: no such file"));
}
