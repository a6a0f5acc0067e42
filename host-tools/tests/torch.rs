//! The PyTorch path, run for real: an `HvaeModule` (`reference/torch_export.py`) trained
//! in PyTorch, saved with `save_torch`, read by `hvae import` and run through the core
//! agrees with PyTorch's own forward pass on every row of the bundled digits.
//!
//! Python: `$HVAE_PYTHON`, else `reference/.venv/bin/python`, with `torch` importable
//! (CI: Debian's `python3-torch`, put on the venv's path by `.ci/run`). Without it each
//! test prints a loud SKIPPED note and returns; with the `CI` environment variable set it
//! fails instead, so CI cannot skip it silently.
//!
//! Run: `cargo test --release -p hvae-host-tools --test torch -- --nocapture` (prints the
//! measured agreement).

mod common;

use hvae::{Activation, Posterior};
use hvae_host::{data, model_io};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest difference allowed in a component of `mu` (unit vectors): 2e-6, about 17 units in
/// the last place of 1.0 in `f32`. PyTorch's blocked matrix products and the core's
/// sequential dot products round differently in every layer; the worst difference
/// measured over the 1,797 rows is 3.6e-7.
const MU_TOL: f32 = 2e-6;
/// Largest relative difference allowed in `kappa`, for the same reason (measured 3.2e-7).
const KAPPA_TOL: f32 = 2e-6;
/// Largest difference allowed in a cluster probability: the softmax multiplies the
/// cosine differences by `kappa_s` (about 19 after this training); measured 1.5e-6.
const PROB_TOL: f32 = 1e-5;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference")
}

fn skip(why: &str) -> Option<PathBuf> {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, so the PyTorch tests must run, but: {why}");
    }
    eprintln!("\n***************************************************************");
    eprintln!("*** SKIPPED PyTorch test: {why}");
    eprintln!("***************************************************************\n");
    None
}

/// The Python whose `torch_export.py` sees `torch`, or `None` (after the note).
fn python_with_torch() -> Option<PathBuf> {
    let py = match std::env::var_os("HVAE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => reference_dir().join(".venv/bin/python"),
    };
    if !py.exists() {
        return skip(&format!(
            "no Python: set HVAE_PYTHON or create {}",
            py.display()
        ));
    }
    let probe = Command::new(&py)
        .current_dir(reference_dir())
        .args([
            "-c",
            "import sys; from torch_export import torch; sys.exit(0 if torch else 3)",
        ])
        .output()
        .unwrap();
    if !probe.status.success() {
        return skip(&format!(
            "{} cannot import torch (Debian: apt-get install python3-torch; .ci/run links it): {}",
            py.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Some(py)
}

/// Runs `py args...` in `reference/`, panicking with its stderr on failure; its stdout.
fn run_python(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py)
        .current_dir(reference_dir())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `hvae args...`; panics with its stderr on failure; its stdout.
fn hvae(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hvae"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hvae {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// How the core's answers on every row compare with PyTorch's.
#[derive(Debug)]
struct Agreement {
    rows: usize,
    /// Largest `|mu_core - mu_torch|` over every component of every row.
    mu: f32,
    /// Largest `|kappa_core - kappa_torch| / kappa_torch`.
    kappa: f32,
    /// Largest `|p_core - p_torch|` over every cluster of every row.
    probs: f32,
    /// Rows whose labels differ though PyTorch's two probabilities are within
    /// `2 PROB_TOL`: a near-tie that either side may break its way.
    near_ties: usize,
    /// Rows whose labels differ otherwise.
    label_mismatches: usize,
    /// Smallest and largest `kappa`, and the mean of each row's largest probability
    /// (PyTorch's): a trained model, not one that says the same of every row.
    kappa_range: (f32, f32),
    top_p: f32,
    /// Rows per cluster (the core's labels).
    sizes: Vec<usize>,
}

/// Imports `safetensors` with `hvae import` and compares the core's answers on every
/// digits row with PyTorch's (`answers`: `mu | kappa | p` per row, a float32 `.npy`).
fn agreement(safetensors: &Path, answers: &Path, dir: &Path) -> (Agreement, PathBuf) {
    let blob = dir.join(format!(
        "{}.hvae",
        safetensors.file_stem().unwrap().to_str().unwrap()
    ));
    let said = hvae(&["import", "--safetensors", s(safetensors), "--out", s(&blob)]);
    assert!(said.contains("(metadata)"), "{said}");
    let digits = common::digits_path();
    let model = model_io::load(&blob).unwrap().model;
    let shape = *model.shape();
    let (m, k) = (shape.latent, shape.clusters);
    let rows = data::load(&digits).unwrap();
    let torch = data::load(answers).unwrap();
    assert_eq!(torch.dim(), m + 1 + k);
    assert_eq!(torch.len(), rows.len());
    let mut work = vec![0f32; model.work_len()];
    let mut a = Agreement {
        rows: rows.len(),
        mu: 0.0,
        kappa: 0.0,
        probs: 0.0,
        near_ties: 0,
        label_mismatches: 0,
        kappa_range: (f32::INFINITY, 0.0),
        top_p: 0.0,
        sizes: vec![0; k],
    };
    for (x, t) in rows.rows().zip(torch.rows()) {
        let (t_mu, t_kappa, t_p) = (&t[..m], t[m], &t[m + 1..]);
        let seg = model.segment(x, &mut work).unwrap();
        for (c, t) in seg.mu.iter().zip(t_mu) {
            a.mu = a.mu.max((c - t).abs());
        }
        a.kappa = a.kappa.max((seg.kappa - t_kappa).abs() / t_kappa);
        for (c, t) in seg.probs.iter().zip(t_p) {
            a.probs = a.probs.max((c - t).abs());
        }
        // PyTorch's label: the first largest probability, as the core breaks ties.
        let t_label = (0..k).fold(0, |b, q| if t_p[q] > t_p[b] { q } else { b });
        a.kappa_range = (a.kappa_range.0.min(t_kappa), a.kappa_range.1.max(t_kappa));
        a.top_p += t_p[t_label] / rows.len() as f32;
        a.sizes[seg.label] += 1;
        if seg.label != t_label {
            if (t_p[seg.label] - t_p[t_label]).abs() <= 2.0 * PROB_TOL {
                a.near_ties += 1;
            } else {
                a.label_mismatches += 1;
            }
        }
    }
    (a, blob)
}

fn assert_agrees(what: &str, a: &Agreement) {
    eprintln!(
        "{what}: {} rows: |mu| {:.2e}, kappa (relative) {:.2e}, |p| {:.2e}, labels differ on \
         {} near-ties and {} other rows (kappa {:.2}..{:.2}, mean top p {:.3}, sizes {:?})",
        a.rows,
        a.mu,
        a.kappa,
        a.probs,
        a.near_ties,
        a.label_mismatches,
        a.kappa_range.0,
        a.kappa_range.1,
        a.top_p,
        a.sizes
    );
    assert!(a.mu <= MU_TOL, "{what}: mu differs by {:e}", a.mu);
    assert!(
        a.kappa <= KAPPA_TOL,
        "{what}: kappa differs by {:e}",
        a.kappa
    );
    assert!(a.probs <= PROB_TOL, "{what}: p differs by {:e}", a.probs);
    assert_eq!(a.label_mismatches, 0, "{what}: labels differ");
    // A near-tie needs two probabilities within 2e-5 of each other at the top: rare.
    assert!(a.near_ties <= 2, "{what}: {} near-ties", a.near_ties);
}

/// For each case `(posterior, activation, hidden)`: trains an `HvaeModule` for 300 steps
/// of Adam on the digits (a plain loss: the reconstruction from a noisy direction around
/// `mu` whose spread is `1/sqrt(kappa)`, a `0.5 ln kappa` penalty, and confident but
/// balanced cluster probabilities), with a per-feature normalisation in its buffers;
/// saves it with `save_torch` as `DIR/{i}.safetensors`, reads that back with
/// `load_torch` and writes its forward pass on every row (`mu | kappa | p`) as
/// `DIR/{i}.npy`. One process for all cases: importing torch takes seconds.
const TRAIN_SMALL: &str = r#"
import sys
import numpy as np
from torch_export import (torch, HvaeModule, save_torch, load_torch, forward_rows,
                          read_rows, numpy_to_tensor)
data, out_dir = sys.argv[1:3]
rows = read_rows(data)[0]
x = numpy_to_tensor(rows)
m = 16
def entropy(q):
    return -(q * q.clamp_min(1e-30).log()).sum(-1)
for i, case in enumerate(sys.argv[3:]):
    posterior, activation, hidden = case.split("/")
    torch.manual_seed(i)
    module = HvaeModule(x.shape[1], [int(h) for h in hidden.split(",")], m, 10, activation)
    sd = x.std(0, unbiased=False)
    with torch.no_grad():
        module.norm.offset.copy_(x.mean(0))
        module.norm.scale.copy_(torch.where(sd > 1e-6, 1 / sd, torch.ones_like(sd)))
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    for step in range(300):
        xb = x[torch.randint(len(x), (64,))]
        mu, kappa, p = module(xb)
        z = mu + torch.randn_like(mu) / kappa.sqrt()[:, None]
        z = z / z.norm(dim=1, keepdim=True)
        recon = 0.5 * (module.decode(z) - module.norm(xb)).pow(2).sum(1).mean()
        loss = recon + 0.5 * kappa.log().mean() \
            + 2.0 * (entropy(p).mean() - 2.0 * entropy(p.mean(0)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = f"{out_dir}/{i}.safetensors"
    save_torch(module, path, posterior=posterior)
    loaded, kinds = load_torch(path)
    assert kinds["posterior"] == posterior and kinds["activation"] == activation, kinds
    np.save(f"{out_dir}/{i}.npy", forward_rows(loaded.eval(), rows))
"#;

#[test]
fn module_trained_in_torch_agrees_with_the_core_on_every_digit() {
    let Some(py) = python_with_torch() else {
        return;
    };
    // Both posteriors, both activations, one and two hidden layers.
    let cases = [
        ("vmf", "relu", "32"),
        ("power", "relu", "32"),
        ("vmf", "tanh", "48,24"),
        ("power", "tanh", "48,24"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "-c".to_string(),
        TRAIN_SMALL.to_string(),
        s(&common::digits_path()).to_string(),
        s(dir.path()).to_string(),
    ];
    args.extend(cases.iter().map(|(p, a, h)| format!("{p}/{a}/{h}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_python(&py, &args);
    for (i, (posterior, activation, hidden)) in cases.into_iter().enumerate() {
        let st = dir.path().join(format!("{i}.safetensors"));
        let answers = dir.path().join(format!("{i}.npy"));
        let (a, blob) = agreement(&st, &answers, dir.path());
        let shape = *model_io::load(&blob).unwrap().model.shape();
        let want = if posterior == "vmf" {
            Posterior::VonMisesFisher
        } else {
            Posterior::PowerSpherical
        };
        assert_eq!(shape.posterior, want);
        let want = if activation == "relu" {
            Activation::Relu
        } else {
            Activation::Tanh
        };
        assert_eq!(shape.activation, want);
        // Trained: kappa varies by row, most rows are confidently in one of the clusters
        // and every cluster is used (measured: kappa from 1 to 18-70, mean top p 0.95).
        assert!(a.kappa_range.1 > a.kappa_range.0 + 0.5, "{a:?}");
        assert!(a.top_p > 0.8, "{a:?}");
        assert!(a.sizes.iter().all(|&n| n > 0), "{a:?}");
        assert_agrees(&format!("{posterior}/{activation}/{hidden}"), &a);
    }
}
