//! The `hvae` binary end to end: help, eval, inspect, export, exit statuses and
//! one-line errors. Model files are built here with the core API and written with
//! `hvae::store::blob::write` (the `train` command does not exist yet).

mod common;

use common::{run, run_model, s, Run};
use hvae::{Likelihood, Posterior, Shape};
use hvae_host::data;
use hvae_host::synth::VmfMixture;
use std::path::{Path, PathBuf};

/// [`common::assert_one_line_error`], and nothing on stdout.
fn assert_one_line_error(r: &Run, code: i32, needle: &str) {
    common::assert_one_line_error(r, code, needle);
    assert!(r.stdout.is_empty(), "stdout: {}", r.stdout);
}

/// A labelled 8-D vMF mixture with 4 clusters written as CSV, and a model for it.
struct Fixture {
    dir: tempfile::TempDir,
    data: PathBuf,
    model: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mix = VmfMixture::new(8, 4, 200, 30.0, 7).generate().unwrap();
    let data = dir.path().join("mix.csv");
    data::write_csv(&data, &mix.data).unwrap();
    let shape = Shape::new(8, &[6], 3, 4).with_posterior(Posterior::PowerSpherical);
    let model = common::write_model(dir.path(), "m.hvae", &common::model(shape, 1));
    Fixture { dir, data, model }
}

#[test]
fn help_is_complete() {
    let r = run(&["--help"]);
    assert_eq!(r.code, 0);
    for cmd in ["eval", "inspect", "export"] {
        assert!(r.stdout.contains(cmd), "{}", r.stdout);
    }
    assert!(r.stdout.contains("Exit status"), "{}", r.stdout);
    for (cmd, flags) in [
        (
            "eval",
            &["--model", "--data", "--json", "--seed", "--restarts"][..],
        ),
        ("inspect", &["--model", "--batch", "--buffer", "--json"][..]),
        (
            "export",
            &["--model", "--format", "--out", "bin", "rust"][..],
        ),
    ] {
        let r = run(&[cmd, "--help"]);
        assert_eq!(r.code, 0, "{cmd}");
        for f in flags {
            assert!(r.stdout.contains(f), "{cmd} --help lacks {f}: {}", r.stdout);
        }
    }
    assert_eq!(run(&["--version"]).code, 0);
    // Usage errors are clap's (exit 2).
    assert_eq!(run(&["eval"]).code, 2);
    assert_eq!(run(&["no-such-command"]).code, 2);
}

fn json(text: &str) -> serde_json::Value {
    assert_eq!(text.lines().count(), 1, "not one line: {text}");
    serde_json::from_str(text).unwrap()
}

fn unit(v: &serde_json::Value) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((-1.0..=1.0).contains(&x), "{x}");
    x
}

#[test]
fn eval_json_has_every_field() {
    let f = fixture();
    let r = run_model("eval", &f.model, &["--data", s(&f.data), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r.stdout);
    assert_eq!(v["n"], 200);
    for k in ["acc", "nmi", "ari"] {
        unit(&v[k]);
    }
    let novelty = v["novelty"].as_f64().unwrap();
    assert!((0.0..=2.0).contains(&novelty));
    let sizes: Vec<u64> = serde_json::from_value(v["cluster_sizes"].clone()).unwrap();
    assert_eq!(sizes.len(), 4);
    assert_eq!(sizes.iter().sum::<u64>(), 200);
    for b in ["kmeans", "spherical_kmeans"] {
        for k in ["acc", "nmi", "ari"] {
            unit(&v["baselines"][b][k]);
        }
        // Well-separated clusters: both baselines recover them.
        assert!(v["baselines"][b]["acc"].as_f64().unwrap() > 0.95, "{v}");
    }
    // The JSON agrees with the library on the same inputs.
    let loaded = hvae_host::model_io::load(&f.model).unwrap();
    let d = data::load(&f.data).unwrap();
    let seg = hvae_host::commands::eval::segment_all(&loaded.model, &d).unwrap();
    let sc = hvae_host::metrics::scores(d.labels().unwrap(), &seg.labels);
    assert_eq!(v["acc"].as_f64().unwrap(), sc.acc);
    assert_eq!(v["nmi"].as_f64().unwrap(), sc.nmi);
    assert_eq!(v["ari"].as_f64().unwrap(), sc.ari);
    assert_eq!(novelty, seg.mean_novelty);

    // Same seed, same report; the text form names the three rows.
    let again = run_model("eval", &f.model, &["--data", s(&f.data), "--json"]);
    assert_eq!(again.stdout, r.stdout);
    let text = run(&["eval", "--model", s(&f.model), "--data", s(&f.data)]);
    assert_eq!(text.code, 0);
    for needle in [
        "ACC",
        "NMI",
        "ARI",
        "model",
        "k-means",
        "spherical k-means",
        "novelty",
    ] {
        assert!(text.stdout.contains(needle), "{}", text.stdout);
    }
}

#[test]
fn eval_without_labels_says_so() {
    let f = fixture();
    let d = data::load(&f.data).unwrap();
    let unlabelled = data::Dataset::new(d.columns().to_vec(), d.features().to_vec(), None).unwrap();
    let p = f.dir.path().join("nolabel.csv.gz");
    data::write_csv(&p, &unlabelled).unwrap();
    let r = run(&["eval", "--model", s(&f.model), "--data", s(&p), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r.stdout);
    assert_eq!(v["n"], 200);
    assert!(v["acc"].is_null() && v["nmi"].is_null() && v["ari"].is_null());
    assert!(v["baselines"].is_null());
    assert!(v["novelty"].as_f64().is_some());
    assert!(r.stderr.contains("no 'label' column"), "{}", r.stderr);
    let r = run(&["eval", "--model", s(&f.model), "--data", s(&p)]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("no labels"), "{}", r.stdout);
    assert!(r.stdout.contains("mean novelty"), "{}", r.stdout);
}

#[test]
fn train_rejects_bad_schedule_and_loss_settings() {
    let f = fixture();
    let out = f.dir.path().join("never.hvae");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--data", s(&f.data), "--clusters", "4"];
        args.extend(["--out", s(&out)]);
        args.extend(extra);
        run(&args)
    };
    for floor in ["1.5", "-0.1", "NaN"] {
        let r = train(&[&format!("--balance-floor={floor}")]);
        assert_one_line_error(&r, 2, "--balance-floor must be in [0, 1]");
    }
    assert_one_line_error(&train(&["--lr", "0"]), 2, "--lr must be a positive number");
    let r = train(&["--epochs", "5", "--warmup", "5"]);
    assert_one_line_error(&r, 2, "--warmup 5 must be below --epochs 5");
    assert!(!out.exists());
}

#[test]
fn eval_bad_inputs() {
    let f = fixture();
    // A model for 5 inputs on 8-column data.
    let other = common::write_model(
        f.dir.path(),
        "five.hvae",
        &common::model(Shape::new(5, &[4], 2, 3), 2),
    );
    let r = run(&["eval", "--model", s(&other), "--data", s(&f.data)]);
    assert_one_line_error(&r, 2, "expects 5 input features");
    assert!(r.stderr.contains("8 feature columns"), "{}", r.stderr);

    let r = run(&["eval", "--model", s(&f.model), "--data", "/no/such.csv"]);
    assert_one_line_error(&r, 2, "/no/such.csv: no such file");

    let ragged = f.dir.path().join("ragged.csv");
    std::fs::write(&ragged, "a,b,label\n1,2,0\n1,2\n").unwrap();
    let r = run(&["eval", "--model", s(&f.model), "--data", s(&ragged)]);
    assert_one_line_error(&r, 2, "line 3: expected 3 fields, found 2");

    let nan = f.dir.path().join("nan.csv");
    std::fs::write(&nan, "a,b\n1,nan\n").unwrap();
    let r = run(&["eval", "--model", s(&f.model), "--data", s(&nan)]);
    assert_one_line_error(&r, 2, "line 2, column 'b': 'nan' is not a finite f32 value");

    let r = run(&["eval", "--model", s(&f.data), "--data", s(&f.data)]);
    assert_one_line_error(&r, 2, "not an hvae weight blob");
}

#[test]
fn eval_on_digits() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape::new(64, &[32], 8, 10).with_likelihood(Likelihood::Bernoulli);
    let model = common::write_model(dir.path(), "digits.hvae", &common::model(shape, 3));
    let digits = common::digits_path();
    let r = run_model(
        "eval",
        &model,
        &["--data", s(&digits), "--json", "--restarts", "2"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r.stdout);
    assert_eq!(v["n"], 1797);
    // Whatever the untrained model does, the baselines are near their usual values.
    for b in ["kmeans", "spherical_kmeans"] {
        let acc = v["baselines"][b]["acc"].as_f64().unwrap();
        let nmi = v["baselines"][b]["nmi"].as_f64().unwrap();
        assert!(acc > 0.65 && nmi > 0.65, "{b}: {v}");
    }
}

#[test]
fn inspect_reports_sizes_memory_and_crc() {
    let f = fixture();
    let loaded = hvae_host::model_io::load(&f.model).unwrap();
    let crc = format!("{:#010x}", loaded.crc);
    let r = run(&["inspect", "--model", s(&f.model)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        crc.as_str(),
        "Power Spherical",
        "Gaussian",
        "ReLU",
        "EncoderAndSegmenter",
        "SegmenterOnly",
        "adam",
        "sgd",
        "factored-rms",
        "batch of 8 anchors",
        "buffer of 64 samples",
    ] {
        assert!(r.stdout.contains(needle), "lacks {needle}: {}", r.stdout);
    }
    let shape = *loaded.model.shape();
    assert!(r.stdout.contains(&shape.param_len().to_string()));

    let r = run_model(
        "inspect",
        &f.model,
        &["--json", "--batch", "4", "--buffer", "32"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r.stdout);
    assert_eq!(v["crc"], crc.as_str());
    assert_eq!(v["input"], 8);
    assert_eq!(v["hidden"], serde_json::json!([6]));
    assert_eq!(v["latent"], 3);
    assert_eq!(v["clusters"], 4);
    assert_eq!(v["parameters"]["total"], shape.param_len());
    assert_eq!(v["parameters"]["inference"], shape.inference_param_len());
    let mem = v["memory"].as_array().unwrap();
    // Inference, then 3 scopes x 4 optimisers.
    assert_eq!(mem.len(), 13);
    let want = hvae::Memory::training::<f32>(
        &shape,
        hvae::Scope::SegmenterOnly,
        hvae::OptimKind::Adam,
        4,
        32,
    );
    let row = mem
        .iter()
        .find(|m| m["scope"] == "SegmenterOnly" && m["optimiser"] == "adam")
        .unwrap();
    assert_eq!(row["total"], want.total());
    // The factored second moment alone: a value per row and per column of each matrix
    // (and per value of each vector) where Adam keeps two per parameter.
    let state = |o: &str| {
        let r = mem
            .iter()
            .find(|m| m["scope"] == "Full" && m["optimiser"] == o)
            .unwrap();
        r["optimiser_state"].as_u64().unwrap() as usize
    };
    let kinds = [
        ("factored-rms", hvae::OptimKind::FactoredRms),
        ("factored", hvae::OptimKind::Factored),
    ];
    for (name, kind) in kinds {
        let want = hvae::Memory::training::<f32>(&shape, hvae::Scope::Full, kind, 4, 32);
        assert_eq!(state(name), want.optimiser, "{name}");
    }
    assert!(state("factored-rms") < state("adam") / 2);
    assert!(state("factored") > state("adam") / 2 && state("factored") < state("adam"));
    assert_eq!(
        mem[0]["total"],
        hvae::Memory::inference::<f32>(&shape).total()
    );

    // Out-of-range assumptions are usage errors.
    assert_eq!(
        run(&["inspect", "--model", s(&f.model), "--batch", "0"]).code,
        2
    );
    assert_eq!(
        run(&["inspect", "--model", s(&f.model), "--batch", "65"]).code,
        2
    );
}

#[test]
fn inspect_rejects_corrupt_and_foreign_files() {
    let f = fixture();
    let good = std::fs::read(&f.model).unwrap();
    let p = f.dir.path().join("bad.hvae");

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    std::fs::write(&p, &flipped).unwrap();
    assert_one_line_error(&run(&["inspect", "--model", s(&p)]), 2, "CRC mismatch");

    std::fs::write(&p, &good[..good.len() - 7]).unwrap();
    assert_one_line_error(&run(&["inspect", "--model", s(&p)]), 2, "truncated");

    std::fs::write(&p, b"").unwrap();
    assert_one_line_error(&run(&["inspect", "--model", s(&p)]), 2, "truncated");

    assert_one_line_error(
        &run(&["inspect", "--model", s(&f.data)]),
        2,
        "not an hvae weight blob (bad magic)",
    );
    assert_one_line_error(
        &run(&["inspect", "--model", s(f.dir.path())]),
        2,
        "cannot read",
    );
    assert_one_line_error(
        &run(&["inspect", "--model", "/no/such.hvae"]),
        2,
        "no such file",
    );
}

/// Extracts the literals of `static PARAMS: [f32; N] = [ ... ];` and of C's
/// `hvae_params[...] = { ... };`.
fn array_literals<'a>(text: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let start = text.find(open).unwrap() + open.len();
    let end = start + text[start..].find(close).unwrap();
    text[start..end]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Parameters with awkward values: subnormals, -0.0, extremes, values that need 9
/// significant digits.
fn awkward_model() -> hvae::VecModel<f32> {
    let shape = Shape::new(3, &[2], 2, 2);
    let mut p = common::params(&shape, 9);
    let specials = [
        -0.0f32,
        f32::MIN_POSITIVE,
        f32::MIN_POSITIVE / 3.0,
        f32::from_bits(1),
        f32::MAX,
        -f32::MAX,
        0.1,
        1.0 / 3.0,
        16_777_217.0,
        1e-7,
        -2.5e10,
    ];
    let so = shape.segmenter_offset() + shape.segmenter_len(); // start of the decoder
    p[so..so + specials.len()].copy_from_slice(&specials);
    hvae::infer::model::Model::new(shape, p).unwrap()
}

#[test]
fn export_bin_rust_and_c() {
    let dir = tempfile::tempdir().unwrap();
    let m = awkward_model();
    let model = common::write_model(dir.path(), "awk.hvae", &m);
    let crc = hvae_host::model_io::load(&model).unwrap().crc;

    // bin: the blob itself.
    let bin = dir.path().join("out.bin");
    let r = run_model("export", &model, &["--format", "bin", "--out", s(&bin)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&model).unwrap());

    // rust: every literal parses back to the exact bits.
    let rs = dir.path().join("model.rs");
    let r = run_model("export", &model, &["--format", "rust", "--out", s(&rs)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&rs).unwrap();
    assert!(text.contains("hvae::exported_model! {\n"), "{text}");
    assert!(
        text.contains("shape: (3, [2], 2, 2, Relu, VonMisesFisher, Gaussian),"),
        "{text}"
    );
    assert!(text.contains(&format!("blob_crc: {crc:#010x},")));
    let lits = array_literals(&text, "params: [", "],");
    assert_eq!(lits.len(), m.params().len());
    for (lit, &want) in lits.iter().zip(m.params()) {
        let got: f32 = lit.parse().unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "{lit} vs {want:?}");
    }

    // c: the defines and the array, same exact values.
    let h = dir.path().join("model.h");
    let r = run_model("export", &model, &["--format", "c", "--out", s(&h)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&h).unwrap();
    for needle in [
        "#define HVAE_INPUT 3",
        "#define HVAE_HIDDEN_0 2",
        "#define HVAE_LATENT 2",
        "#define HVAE_CLUSTERS 2",
        "#define HVAE_SEGMENTER_CENTRES_OFFSET",
        "#define HVAE_NORM_SCALE_OFFSET 3",
        "static const float hvae_params[HVAE_PARAM_LEN] = {",
    ] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    assert!(text.contains(&format!("#define HVAE_BLOB_CRC {crc:#010x}u")));
    let lits = array_literals(&text, "hvae_params[HVAE_PARAM_LEN] = {", "};");
    assert_eq!(lits.len(), m.params().len());
    for (lit, &want) in lits.iter().zip(m.params()) {
        let got: f32 = lit.strip_suffix('f').unwrap().parse().unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "{lit}");
    }
    check_c_header_compiles(dir.path(), &h, m.params());
}

/// If a C compiler is installed, compiles a program that prints the header's values as
/// bits and compares them with the model's.
fn check_c_header_compiles(dir: &Path, header: &Path, params: &[f32]) {
    let Ok(cc) = which_cc() else {
        eprintln!("no C compiler: skipping the compile check");
        return;
    };
    let src = dir.join("check.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n#include <string.h>\n#include \"{}\"\n\
             int main(void) {{ for (unsigned i = 0; i < HVAE_PARAM_LEN; i++) {{\n\
             unsigned b; memcpy(&b, &hvae_params[i], 4); printf(\"%08x\\n\", b); }}\n\
             return 0; }}\n",
            header.display()
        ),
    )
    .unwrap();
    let exe = dir.join("check");
    let st = std::process::Command::new(cc)
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "the C header does not compile");
    let out = std::process::Command::new(&exe).output().unwrap();
    let bits: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| u32::from_str_radix(l, 16).unwrap())
        .collect();
    let want: Vec<u32> = params.iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, want);
}

fn which_cc() -> Result<&'static str, ()> {
    for cc in ["cc", "gcc", "clang"] {
        if std::process::Command::new(cc)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(cc);
        }
    }
    Err(())
}

#[test]
fn export_failures_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::write_model(
        dir.path(),
        "m.hvae",
        &common::model(Shape::new(3, &[2], 2, 2), 4),
    );
    // Unwritable destination: exit 1, one line, nothing left behind.
    let out = dir.path().join("missing-dir/out.rs");
    let r = run_model("export", &model, &["--format", "rust", "--out", s(&out)]);
    assert_one_line_error(&r, 1, "cannot write");
    assert!(!out.exists());
    // A corrupt model: exit 2, the old output is untouched, no temporary file remains.
    let old = dir.path().join("old.h");
    std::fs::write(&old, "keep me").unwrap();
    let bad = dir.path().join("bad.hvae");
    std::fs::write(&bad, b"HVAE\x01\x00").unwrap();
    let r = run_model("export", &bad, &["--format", "c", "--out", s(&old)]);
    assert_one_line_error(&r, 2, "truncated");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "keep me");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".hvae-tmp")),
        "{names:?}"
    );
    // Unknown format: usage error.
    assert_eq!(
        run(&[
            "export",
            "--model",
            s(&model),
            "--format",
            "onnx",
            "--out",
            s(&old)
        ])
        .code,
        2
    );
}
