//! `hvae import`: safetensors files written independently of the importer (by the
//! `safetensors` crate's serializer with the documented names spelled out here, and by
//! `reference/torch_export.py`'s NumPy path) import to the very blob they came from, and
//! every kind of bad file is a one-line error with exit status 2 and no output file.
//!
//! Python: `$HVAE_PYTHON`, else `reference/.venv/bin/python`; without either the Python
//! case fails under CI (`CI` set) and is skipped with a note otherwise.

mod common;

use common::{output_ok, reference_python, run, s, Run};
use hvae::VecModel;
use hvae::{Activation, Likelihood, Posterior, Shape};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The names and PyTorch shapes of the documented layout, written out by hand (not
/// taken from the importer) for `D`, `hidden`, `M`, `K`.
fn documented_names(d: usize, hidden: &[usize], m: usize, k: usize) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("norm.offset".into(), vec![d]),
        ("norm.scale".into(), vec![d]),
    ];
    let mut prev = d;
    for (l, &h) in hidden.iter().enumerate() {
        v.push((format!("encoder.{l}.weight"), vec![h, prev]));
        v.push((format!("encoder.{l}.bias"), vec![h]));
        prev = h;
    }
    v.push(("mu.weight".into(), vec![m, prev]));
    v.push(("mu.bias".into(), vec![m]));
    v.push(("kappa.weight".into(), vec![1, prev]));
    v.push(("kappa.bias".into(), vec![1]));
    v.push(("segmenter.centres".into(), vec![k, m]));
    v.push(("segmenter.log_kappa".into(), vec![1]));
    v.push(("segmenter.log_weights".into(), vec![k]));
    let mut dec = vec![m];
    dec.extend(hidden.iter().rev());
    dec.push(d);
    for l in 0..dec.len() - 1 {
        v.push((format!("decoder.{l}.weight"), vec![dec[l + 1], dec[l]]));
        v.push((format!("decoder.{l}.bias"), vec![dec[l + 1]]));
    }
    v
}

/// Named float tensors to serialize: `(name, dtype, shape, little-endian bytes)`.
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// The tensor named `name` in `t`: its name, dtype, shape and bytes.
fn named<'a>(t: &'a mut Tensors, name: &str) -> &'a mut (String, Dtype, Vec<usize>, Vec<u8>) {
    t.iter_mut().find(|(n, ..)| n == name).unwrap()
}

/// The model's parameters cut into the documented tensors, as F32.
fn tensors_of(model: &VecModel<f32>, hidden: &[usize]) -> Tensors {
    let sh = model.shape();
    let names = documented_names(sh.input, hidden, sh.latent, sh.clusters);
    let mut off = 0;
    let p = model.params();
    let t: Tensors = names
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = p[off..off + n]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            off += n;
            (name, Dtype::F32, shape, bytes)
        })
        .collect();
    assert_eq!(off, p.len(), "the documented layout covers every parameter");
    t
}

fn serialize(tensors: &Tensors, meta: Option<&[(&str, &str)]>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, sh, b)| (n.clone(), TensorView::new(*dt, sh.clone(), b).unwrap()))
        .collect();
    let meta = meta.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
    });
    safetensors::serialize(views, meta).unwrap()
}

fn kinds(shape: &Shape) -> [(&'static str, &'static str); 3] {
    [
        (
            "posterior",
            match shape.posterior {
                Posterior::VonMisesFisher => "vmf",
                Posterior::PowerSpherical => "power",
            },
        ),
        (
            "likelihood",
            match shape.likelihood {
                Likelihood::Gaussian => "gaussian",
                Likelihood::Bernoulli => "bernoulli",
            },
        ),
        (
            "activation",
            match shape.activation {
                Activation::Relu => "relu",
                Activation::Tanh => "tanh",
            },
        ),
    ]
}

/// A model with a non-trivial normalisation, and its blob.
fn model_and_blob(shape: Shape, salt: u64) -> (VecModel<f32>, Vec<u8>) {
    let mut model = common::model(shape, salt);
    let d = shape.input;
    let offset: Vec<f32> = (0..d).map(|i| 0.25 * i as f32 - 1.0).collect();
    let scale: Vec<f32> = (0..d).map(|i| 1.0 / (1.0 + i as f32)).collect();
    model.set_normalisation(&offset, &scale).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blob = std::fs::read(common::write_model(dir.path(), "m.hvae", &model)).unwrap();
    (model, blob)
}

fn import(dir: &Path, file_bytes: &[u8], extra: &[&str]) -> (Run, PathBuf) {
    let st = dir.join("in.safetensors");
    std::fs::write(&st, file_bytes).unwrap();
    let out = dir.join("out.hvae");
    let _ = std::fs::remove_file(&out);
    let mut args = vec!["import", "--safetensors", s(&st), "--out", s(&out)];
    args.extend_from_slice(extra);
    (run(&args), out)
}

const SHAPES: [(usize, &[usize], usize, usize); 3] =
    [(8, &[6], 3, 4), (5, &[7, 3], 4, 2), (64, &[32], 8, 10)];

fn shape_variant(i: usize) -> Shape {
    let (d, h, m, k) = SHAPES[i];
    let base = Shape::new(d, h, m, k);
    match i {
        0 => base.with_posterior(Posterior::PowerSpherical),
        1 => base
            .with_activation(Activation::Tanh)
            .with_likelihood(Likelihood::Bernoulli),
        _ => base,
    }
}

#[test]
fn rust_serialized_file_imports_to_the_identical_blob() {
    for (i, &(_, hidden, _, _)) in SHAPES.iter().enumerate() {
        let shape = shape_variant(i);
        let (model, blob) = model_and_blob(shape, 11 + i as u64);
        let tensors = tensors_of(&model, hidden);
        let file = serialize(&tensors, Some(&kinds(&shape)));
        let dir = tempfile::tempdir().unwrap();
        let (r, out) = import(dir.path(), &file, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.is_empty(), "{}", r.stderr);
        assert!(r.stdout.contains("(metadata)"), "{}", r.stdout);
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), blob.len());
        assert!(
            got == blob,
            "shape {i}: the imported blob differs from the original"
        );
    }
}

#[test]
fn python_numpy_export_imports_to_the_identical_blob() {
    let Some(py) = reference_python("the torch_export.py round trip") else {
        return;
    };
    for i in 0..SHAPES.len() {
        let shape = shape_variant(i);
        let (model, blob) = model_and_blob(shape, 21 + i as u64);
        let dir = tempfile::tempdir().unwrap();
        let src = common::write_model(dir.path(), "src.hvae", &model);
        let st = dir.path().join("py.safetensors");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/torch_export.py");
        output_ok(
            std::process::Command::new(&py)
                .arg(&script)
                .arg("from-blob")
                .arg(&src)
                .arg(&st),
        );
        let dst = dir.path().join("back.hvae");
        let r = run(&["import", "--safetensors", s(&st), "--out", s(&dst)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            std::fs::read(&dst).unwrap() == blob,
            "shape {i}: the blob imported from Python's file differs from the original"
        );
    }
}

#[test]
fn flags_override_metadata_and_defaults_apply() {
    // Metadata says vMF/Gaussian/ReLU; the flags ask for Power/Bernoulli/tanh.
    let flagged = Shape::new(8, &[6], 3, 4)
        .with_posterior(Posterior::PowerSpherical)
        .with_likelihood(Likelihood::Bernoulli)
        .with_activation(Activation::Tanh);
    let (model, blob) = model_and_blob(flagged, 5);
    let tensors = tensors_of(&model, &[6]);
    let dir = tempfile::tempdir().unwrap();
    let meta = [
        ("posterior", "vmf"),
        ("likelihood", "gaussian"),
        ("activation", "relu"),
    ];
    let (r, out) = import(
        dir.path(),
        &serialize(&tensors, Some(&meta)),
        &[
            "--posterior",
            "power",
            "--likelihood",
            "bernoulli",
            "--activation",
            "tanh",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::read(&out).unwrap() == blob);
    assert!(r.stdout.contains("Power Spherical (flag)"), "{}", r.stdout);

    // Numeric blob codes in the metadata.
    let codes = [("posterior", "1"), ("likelihood", "1"), ("activation", "1")];
    let (r, out) = import(dir.path(), &serialize(&tensors, Some(&codes)), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::read(&out).unwrap() == blob);

    // No metadata, no flags: vMF, Gaussian, ReLU.
    let plain = Shape::new(8, &[6], 3, 4);
    let (model, blob) = model_and_blob(plain, 5);
    let (r, out) = import(dir.path(), &serialize(&tensors_of(&model, &[6]), None), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("von Mises-Fisher (default)"),
        "{}",
        r.stdout
    );
    assert!(std::fs::read(&out).unwrap() == blob);
}

/// Re-encodes every tensor of `t` with `enc` (`dtype`, bytes of one f32).
fn recode(t: &Tensors, dtype: Dtype, enc: fn(f32) -> Vec<u8>) -> Tensors {
    t.iter()
        .map(|(n, _, sh, b)| {
            let bytes = b
                .chunks_exact(4)
                .flat_map(|c| enc(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            (n.clone(), dtype, sh.clone(), bytes)
        })
        .collect()
}

#[test]
fn f64_f16_bf16_are_converted() {
    let shape = Shape::new(5, &[7, 3], 4, 2);
    // Values exact in half precision (multiples of 1/64 in [-2, 2]), so every
    // conversion must give back exactly the same f32.
    let mut model = common::model(shape, 3);
    for (i, v) in model.params_mut().iter_mut().enumerate() {
        *v = ((i * 37 % 257) as f32 - 128.0) / 64.0;
    }
    let dir = tempfile::tempdir().unwrap();
    let blob = std::fs::read(common::write_model(dir.path(), "m.hvae", &model)).unwrap();
    let f32s = tensors_of(&model, &[7, 3]);
    let meta = kinds(&shape);
    for (dtype, t) in [
        (
            "F64",
            recode(&f32s, Dtype::F64, |v| f64::from(v).to_le_bytes().to_vec()),
        ),
        (
            "F16",
            recode(&f32s, Dtype::F16, |v| {
                half::f16::from_f32(v).to_le_bytes().to_vec()
            }),
        ),
        (
            "BF16",
            recode(&f32s, Dtype::BF16, |v| {
                half::bf16::from_f32(v).to_le_bytes().to_vec()
            }),
        ),
    ] {
        let (r, out) = import(dir.path(), &serialize(&t, Some(&meta)), &[]);
        assert_eq!(r.code, 0, "{dtype}: {}", r.stderr);
        assert!(r.stdout.contains(&format!("({dtype})")), "{}", r.stdout);
        assert!(std::fs::read(&out).unwrap() == blob, "{dtype}");
    }
}

#[test]
fn scalar_log_kappa_and_absent_normalisation_are_accepted() {
    let shape = Shape::new(8, &[6], 3, 4);
    // common::model has offset 0, scale 1: what absent norm.* tensors mean.
    let model = common::model(shape, 9);
    let dir = tempfile::tempdir().unwrap();
    let blob = std::fs::read(common::write_model(dir.path(), "m.hvae", &model)).unwrap();
    let mut t = tensors_of(&model, &[6]);
    t.retain(|(n, ..)| !n.starts_with("norm."));
    let (_, _, sh, _) = named(&mut t, "segmenter.log_kappa");
    sh.clear(); // a 0-d tensor, as nn.Parameter(torch.tensor(x)) saves
    let (r, out) = import(dir.path(), &serialize(&t, Some(&kinds(&shape))), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("identity normalisation"), "{}", r.stdout);
    assert!(std::fs::read(&out).unwrap() == blob);
}

/// Asserts exit status 2, one line naming the problem, nothing on stdout, and that the
/// output file was not created.
fn assert_rejected(r: &Run, out: &Path, needle: &str) {
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
    assert!(r.stderr.starts_with("hvae: error: "), "{}", r.stderr);
    assert!(r.stderr.contains(needle), "{:?} lacks {needle:?}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(!out.exists(), "an output file was left behind");
}

#[test]
fn bad_files_are_one_line_errors_without_output() {
    let shape = Shape::new(8, &[6], 3, 4);
    let (model, _) = model_and_blob(shape, 2);
    let good = tensors_of(&model, &[6]);
    let meta = kinds(&shape);
    let dir = tempfile::tempdir().unwrap();
    let edit = |f: &dyn Fn(&mut Tensors)| {
        let mut t = good.clone();
        f(&mut t);
        serialize(&t, Some(&meta))
    };
    let cases: Vec<(&str, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            "missing tensor",
            edit(&|t| t.retain(|(n, ..)| n != "mu.bias")),
            vec![],
            "missing tensor mu.bias",
        ),
        (
            "missing size-giving tensor",
            edit(&|t| t.retain(|(n, ..)| n != "segmenter.centres")),
            vec![],
            "missing tensor segmenter.centres",
        ),
        (
            "extra tensor",
            edit(&|t| {
                t.push((
                    "encoder.0.running_mean".into(),
                    Dtype::F32,
                    vec![1],
                    vec![0; 4],
                ))
            }),
            vec![],
            "unexpected tensor encoder.0.running_mean",
        ),
        (
            "wrong shape",
            edit(&|t| {
                let (_, _, sh, b) = named(t, "kappa.weight");
                // [1, 6] stored as [6]: same values, wrong shape.
                *sh = vec![6];
                assert_eq!(b.len(), 24);
            }),
            vec![],
            "tensor kappa.weight has shape [6], expected [1, 6]",
        ),
        (
            "transposed weight",
            edit(&|t| {
                let (_, _, sh, _) = named(t, "decoder.0.weight");
                sh.reverse();
            }),
            vec![],
            "decoder.0.weight has shape [3, 6], expected [6, 3]",
        ),
        (
            "NaN",
            edit(&|t| {
                let (_, _, _, b) = named(t, "segmenter.centres");
                b[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            vec![],
            "segmenter.centres has a non-finite value at flat index 2",
        ),
        (
            "f64 beyond f32",
            {
                let mut t = recode(&good, Dtype::F64, |v| f64::from(v).to_le_bytes().to_vec());
                let (_, _, _, b) = named(&mut t, "mu.weight");
                b[0..8].copy_from_slice(&1e300f64.to_le_bytes());
                serialize(&t, Some(&meta))
            },
            vec![],
            "mu.weight has a non-finite value at flat index 0",
        ),
        (
            "wrong dtype",
            {
                let mut t = good.clone();
                let (_, dt, _, _) = named(&mut t, "mu.bias");
                // Same byte count (3 x 4 bytes): the dtype alone is wrong.
                *dt = Dtype::I32;
                serialize(&t, Some(&meta))
            },
            vec![],
            "tensor mu.bias has dtype I32",
        ),
        (
            "garbage bytes",
            b"this is not a safetensors file at all, just text\n".to_vec(),
            vec![],
            "not a valid safetensors file",
        ),
        (
            "truncated",
            {
                let f = serialize(&good, Some(&meta));
                f[..f.len() - 10].to_vec()
            },
            vec![],
            "not a valid safetensors file",
        ),
        ("empty", Vec::new(), vec![], "not a valid safetensors file"),
        (
            "bad metadata",
            serialize(&good, Some(&[("posterior", "gaussian")])),
            vec![],
            "metadata posterior=\"gaussian\" is not one of vmf, power",
        ),
        (
            "half the normalisation",
            edit(&|t| t.retain(|(n, ..)| n != "norm.scale")),
            vec![],
            "norm.offset is present but norm.scale is missing",
        ),
        (
            "cluster count disagrees",
            serialize(&good, Some(&meta)),
            vec!["--clusters", "5"],
            "--clusters is 5 but segmenter.centres gives 4",
        ),
        (
            "hidden widths disagree",
            serialize(&good, Some(&meta)),
            vec!["--hidden", "6,6"],
            "--hidden is [6, 6]",
        ),
    ];
    for (what, bytes, extra, needle) in cases {
        let (r, out) = import(dir.path(), &bytes, &extra);
        eprintln!("{what}: {}", r.stderr.trim_end());
        assert_rejected(&r, &out, needle);
    }

    // A missing input file, and an existing output left untouched by a failure.
    let out = dir.path().join("keep.hvae");
    std::fs::write(&out, b"old").unwrap();
    let r = run(&[
        "import",
        "--safetensors",
        s(&dir.path().join("nope.safetensors")),
        "--out",
        s(&out),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no such file"), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".hvae-tmp"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

#[test]
fn help_documents_the_names() {
    let r = run(&["import", "--help"]);
    assert_eq!(r.code, 0);
    for needle in [
        "encoder.{l}.weight",
        "mu.weight",
        "kappa.bias",
        "segmenter.centres",
        "segmenter.log_kappa",
        "segmenter.log_weights",
        "decoder.{l}.weight",
        "norm.offset",
        "torch_export.py",
        "--posterior",
    ] {
        assert!(r.stdout.contains(needle), "help lacks {needle}");
    }
}
