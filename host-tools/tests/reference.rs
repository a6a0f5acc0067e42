//! The core against the independent Python reference (`host-tools/reference/`).
//!
//! Each case builds a model with the core (fresh initialisation, then every tensor
//! perturbed so that no bias, weight or mixing weight is symmetric), a random batch with
//! pairs and labels, and posterior draws made by the core's real sampler and recorded as
//! `(kappa, w, dw/dkappa, v)`. The core then computes, from the same `f32` parameters:
//! inference outputs (`segment`) in `f32` and in `f64`; the loss parts, the new moving
//! marginal and the scope's gradients in `f64` (the parameters widened) and in `f32`,
//! both replaying the recorded draws with [`ReplayDraws`]. Everything goes into one JSON
//! file per case next to the blob, and `reference/compare.py` recomputes it all with
//! NumPy/SciPy and `autograd` and judges the differences (tolerances in its docstring).
//!
//! Python: `$HVAE_PYTHON`, else `reference/.venv/bin/python`. Without either the test
//! fails under CI (`CI` set) and is skipped with a loud note otherwise. Set up the venv:
//! `python3 -m venv host-tools/reference/.venv &&
//!  host-tools/reference/.venv/bin/pip install -r host-tools/reference/requirements.txt`.
//!
//! Run with `cargo test --release -p hvae-host-tools --test reference -- --nocapture` to
//! see the per-case tables and the worst errors.

mod common;

use common::reference_python;
use hvae::dist::sphere::{reflect, Draw, SampleError};
use hvae::infer::model::{Model, VecModel};
use hvae::shape::TensorId;
use hvae::store::blob;
use hvae::train::loss::{
    loss_and_grad, Batch, ClusterInput, DrawSource, LossBuffers, LossConfig, LossParts, ReplayDraws,
};
use hvae::{Activation, Likelihood, Posterior, Real, Scope, Shape};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which rows carry a label.
#[derive(Clone, Copy, Debug)]
enum Labels {
    /// No label slice at all.
    None,
    /// Every other row labelled.
    Mixed,
    /// Every row labelled.
    All,
}

struct Case {
    name: &'static str,
    shape: Shape,
    batch: usize,
    scope: Scope,
    cluster_input: ClusterInput,
    labels: Labels,
    pairs: bool,
    /// `lambda` (per-sample entropy weight).
    entropy: f64,
    /// `rho` (moving-average momentum of the marginal).
    rho: f64,
    sigma: f64,
    /// Typical posterior concentration the concentration head is biased towards.
    kappa0: f64,
    seed: u64,
}

fn cases() -> Vec<Case> {
    use Activation::{Relu, Tanh};
    use ClusterInput::{Draw as OnDraw, Mean};
    use Likelihood::{Bernoulli, Gaussian};
    use Posterior::{PowerSpherical as Ps, VonMisesFisher as Vmf};
    let sh = |d, h: &[usize], m, k, p, l, a| {
        Shape::new(d, h, m, k)
            .with_posterior(p)
            .with_likelihood(l)
            .with_activation(a)
    };
    let base = Case {
        name: "",
        shape: Shape::new(1, &[1], 2, 1),
        batch: 16,
        scope: Scope::Full,
        cluster_input: Mean,
        labels: Labels::None,
        pairs: true,
        entropy: 0.0,
        rho: 0.0,
        sigma: 1.0,
        kappa0: 8.0,
        seed: 0,
    };
    vec![
        Case {
            name: "vmf_gauss_relu_1h_mean_full_unsup",
            shape: sh(9, &[12], 5, 4, Vmf, Gaussian, Relu),
            seed: 1,
            ..base
        },
        Case {
            name: "ps_bern_tanh_2h_draw_full_sup",
            shape: sh(10, &[11, 7], 3, 3, Ps, Bernoulli, Tanh),
            cluster_input: OnDraw,
            labels: Labels::All,
            pairs: false,
            kappa0: 12.0,
            seed: 2,
            ..base
        },
        Case {
            name: "vmf_bern_relu_2h_mean_encseg_mixed",
            shape: sh(8, &[9, 6], 8, 5, Vmf, Bernoulli, Relu),
            scope: Scope::EncoderAndSegmenter,
            labels: Labels::Mixed,
            entropy: 0.5,
            rho: 0.7,
            kappa0: 20.0,
            seed: 3,
            ..base
        },
        Case {
            name: "ps_gauss_tanh_1h_draw_encseg_unsup",
            shape: sh(7, &[8], 4, 3, Ps, Gaussian, Tanh),
            scope: Scope::EncoderAndSegmenter,
            cluster_input: OnDraw,
            entropy: 0.3,
            sigma: 0.7,
            kappa0: 5.0,
            seed: 4,
            ..base
        },
        Case {
            name: "vmf_gauss_tanh_1h_segonly_mixed",
            shape: sh(6, &[10], 3, 4, Vmf, Gaussian, Tanh),
            scope: Scope::SegmenterOnly,
            labels: Labels::Mixed,
            rho: 0.9,
            seed: 5,
            ..base
        },
        Case {
            name: "ps_bern_relu_2h_draw_segonly_unsup",
            shape: sh(9, &[12, 8], 6, 6, Ps, Bernoulli, Relu),
            scope: Scope::SegmenterOnly,
            cluster_input: OnDraw,
            entropy: 0.2,
            seed: 6,
            ..base
        },
        Case {
            name: "vmf_gauss_relu_2h_m16_draw_full_mixed",
            shape: sh(12, &[16, 10], 16, 10, Vmf, Gaussian, Relu),
            cluster_input: OnDraw,
            labels: Labels::Mixed,
            sigma: 1.3,
            kappa0: 30.0,
            batch: 24,
            seed: 7,
            ..base
        },
        Case {
            name: "ps_gauss_relu_1h_m2_mean_full_sup",
            shape: sh(5, &[6], 2, 2, Ps, Gaussian, Relu),
            labels: Labels::All,
            kappa0: 4.0,
            seed: 8,
            ..base
        },
        Case {
            name: "vmf_bern_tanh_1h_m2_draw_full_unsup",
            shape: sh(6, &[7], 2, 3, Vmf, Bernoulli, Tanh),
            cluster_input: OnDraw,
            entropy: 0.4,
            rho: 0.5,
            kappa0: 3.0,
            seed: 9,
            ..base
        },
        Case {
            name: "ps_gauss_tanh_2h_m8_mean_full_mixed",
            shape: sh(10, &[12, 9], 8, 7, Ps, Gaussian, Tanh),
            labels: Labels::Mixed,
            rho: 0.3,
            kappa0: 40.0,
            seed: 10,
            ..base
        },
    ]
}

/// A draw source around the core's real sampler that records each draw as
/// `(kappa, w, dw/dkappa, v)`, `v` the unit tangent part of `H(mu) z` (`H` is an
/// involution, so this undoes the reflection).
struct Recorder<'r, R> {
    rng: &'r mut R,
    kappa: Vec<f64>,
    draws: Vec<(f64, f64)>,
    tangents: Vec<f64>,
}

impl<R: Rng> DrawSource<f64> for Recorder<'_, R> {
    fn draw(
        &mut self,
        posterior: Posterior,
        mu: &[f64],
        kappa: f64,
        z: &mut [f64],
    ) -> Result<Draw<f64>, SampleError> {
        let d = posterior.sample(mu, kappa, self.rng, z)?;
        let mut x = z.to_vec();
        reflect(mu, &mut x);
        let n = x[1..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if n > 0.0 {
            self.tangents.extend(x[1..].iter().map(|v| v / n));
        } else {
            // w = +-1 exactly: any tangent direction gives the same draw.
            self.tangents.push(1.0);
            self.tangents.extend(std::iter::repeat_n(0.0, x.len() - 2));
        }
        self.kappa.push(kappa);
        self.draws.push((d.w, d.dw_dkappa));
        Ok(d)
    }
}

fn uniform(rng: &mut Xoshiro256PlusPlus, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * hvae::dist::rng::uniform::<f64, _>(rng)
}

fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    hvae::dist::rng::standard_normal::<f64, _>(rng)
}

/// The core's initialisation, then every tensor perturbed (see the module docs).
fn build_model(case: &Case, rng: &mut Xoshiro256PlusPlus) -> VecModel<f32> {
    let shape = case.shape;
    let mut model = Model::<f32, Vec<f32>>::with_shape(shape, rng).expect("valid shape");
    for t in shape.tensors() {
        let mut vals: Vec<f64> = model.params()[t.range()]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let fan_in = t.cols as f64;
        for v in vals.iter_mut() {
            *v = match t.id {
                TensorId::NormOffset => uniform(rng, -0.3, 0.3),
                TensorId::NormScale => uniform(rng, 0.6, 1.5),
                TensorId::EncoderWeight(_) | TensorId::MuWeight | TensorId::DecoderWeight(_) => {
                    *v * uniform(rng, 0.8, 1.2) + 0.1 * normal(rng) / fan_in.sqrt()
                }
                TensorId::EncoderBias(_)
                | TensorId::MuBias
                | TensorId::DecoderBias(_)
                | TensorId::LogWeights => 0.3 * normal(rng),
                // pre = wk . h + bk: spread kappa over roughly [kappa0 / 3, 3 kappa0].
                TensorId::KappaWeight => 0.8 * normal(rng) / fan_in.sqrt(),
                TensorId::KappaBias => (case.kappa0 - 1.0).exp_m1().ln() + 0.2 * normal(rng),
                TensorId::Centres => *v + 0.1 * normal(rng),
                TensorId::LogKappaS => 4f64.ln() + 0.3 * normal(rng),
            };
        }
        for (p, v) in model.params_mut()[t.range()].iter_mut().zip(&vals) {
            *p = *v as f32;
        }
    }
    model
}

/// Raw inputs: Gaussian likelihood, normal around 0.5; Bernoulli, uniform in [0, 1].
fn inputs(case: &Case, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
    let n = case.batch * case.shape.input;
    (0..n)
        .map(|_| match case.shape.likelihood {
            Likelihood::Gaussian => (0.5 + 0.8 * normal(rng)) as f32,
            Likelihood::Bernoulli => uniform(rng, 0.0, 1.0) as f32,
        })
        .collect()
}

fn pairs(case: &Case, rng: &mut Xoshiro256PlusPlus) -> Vec<(u16, u16)> {
    if !case.pairs {
        return Vec::new();
    }
    let b = case.batch as u64;
    let mut out: Vec<(u16, u16)> = (0..case.batch)
        .map(|i| {
            let j = (i as u64 + 1 + rng.next_u64() % (b - 1)) % b;
            (i as u16, j as u16)
        })
        .collect();
    // A self pair and a repeated pair: both are legal and both must be counted.
    out.push((2, 2));
    out.push(out[0]);
    out
}

fn labels(case: &Case, rng: &mut Xoshiro256PlusPlus) -> Vec<Option<u8>> {
    let k = case.shape.clusters as u64;
    let mut label = |_| Some((rng.next_u64() % k) as u8);
    match case.labels {
        Labels::None => Vec::new(),
        Labels::All => (0..case.batch).map(&mut label).collect(),
        Labels::Mixed => (0..case.batch)
            .map(|i| if i % 2 == 0 { label(i) } else { None })
            .collect(),
    }
}

fn config<T: Real>(case: &Case) -> LossConfig<T> {
    LossConfig {
        beta: T::of(0.8),
        gamma: T::of(1.7),
        eta: T::of(1.3),
        entropy: T::of(case.entropy),
        sigma: T::of(case.sigma),
        balance_momentum: T::of(case.rho),
        balance_floor: T::zero(),
        cluster_input: case.cluster_input,
        density: T::zero(),
        contrast: T::zero(),
        temperature: T::of(0.5),
        consistency: T::one(),
    }
}

/// Loss parts, new marginal and gradient of one batch.
struct Grad<T> {
    parts: LossParts<T>,
    p_bar: Vec<T>,
    grads: Vec<T>,
}

fn run_loss<T: Real, D: DrawSource<T>>(
    model: &VecModel<T>,
    batch: &Batch<'_, T>,
    cfg: &LossConfig<T>,
    scope: Scope,
    draws: &mut D,
    p_bar_prev: &[T],
) -> Grad<T> {
    let s = *model.shape();
    let bsz = batch.inputs.len() / s.input;
    let mut store = vec![T::zero(); LossBuffers::<T>::storage_len(&s, scope, bsz)];
    let mut bufs = LossBuffers::new(&s, scope, bsz, &mut store).expect("loss buffers");
    bufs.marginal_mut().copy_from_slice(p_bar_prev);
    let parts = loss_and_grad(model, batch, cfg, draws, &mut bufs).expect("loss_and_grad");
    Grad {
        parts,
        p_bar: bufs.marginal().to_vec(),
        grads: bufs.grads().to_vec(),
    }
}

fn parts_json<T: Real>(p: &LossParts<T>) -> Value {
    json!({
        "total": p.total.to_f64(), "recon": p.recon.to_f64(), "kl": p.kl.to_f64(),
        "consistency": p.consistency.to_f64(), "entropy": p.entropy.to_f64(),
        "balance": p.balance.to_f64(), "supervised": p.supervised.to_f64(),
    })
}

fn f64s<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// The scope's gradient split by tensor, keyed by the tensor's name.
fn grads_json<T: Real>(shape: &Shape, scope: Scope, grads: &[T]) -> Value {
    let range = shape.scope_range(scope);
    let mut map = Map::new();
    for t in shape.tensors() {
        let r = t.range();
        if r.start >= range.start && r.end <= range.end {
            let g = &grads[r.start - range.start..r.end - range.start];
            map.insert(t.id.to_string(), json!(f64s(g)));
        }
    }
    Value::Object(map)
}

/// `segment` on every row: mu, kappa, probs, label, cosine.
fn segment_json<T: Real>(model: &VecModel<T>, x: &[T]) -> Value {
    let s = *model.shape();
    let mut work = vec![T::zero(); s.work_len()];
    let (mut mu, mut kappa, mut probs, mut label, mut cosine) =
        (vec![], vec![], vec![], vec![], vec![]);
    for row in x.chunks(s.input) {
        let seg = model.segment(row, &mut work).expect("segment");
        mu.push(f64s(seg.mu));
        kappa.push(seg.kappa.to_f64());
        probs.push(f64s(seg.probs));
        label.push(seg.label);
        cosine.push(seg.cosine.to_f64());
    }
    json!({"mu": mu, "kappa": kappa, "probs": probs, "label": label, "cosine": cosine})
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den = b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300);
    num / den
}

/// Builds one case, runs the core, writes `NAME.hvae` and `NAME.json` into `dir`.
fn write_case(case: &Case, dir: &Path) -> PathBuf {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x5EED_0000 + case.seed);
    let shape = case.shape;
    let model32 = build_model(case, &mut rng);
    let model64: VecModel<f64> = Model::new(shape, f64s(model32.params())).expect("widened model");
    let x32 = inputs(case, &mut rng);
    let x64 = f64s(&x32);
    let pairs = pairs(case, &mut rng);
    let labels = labels(case, &mut rng);
    let k = shape.clusters;
    // Previous marginal: a random distribution (used only when rho > 0).
    let mut prev: Vec<f64> = (0..k).map(|_| uniform(&mut rng, 0.5, 1.5)).collect();
    let total: f64 = prev.iter().sum();
    prev.iter_mut().for_each(|v| *v /= total);
    let prev32: Vec<f32> = prev.iter().map(|&v| v as f32).collect();
    let prev = f64s(&prev32);

    let cfg64 = config::<f64>(case);
    let cfg32 = config::<f32>(case);
    let b64 = Batch {
        inputs: &x64,
        labels: &labels,
        pairs: &pairs,
    };
    let b32 = Batch {
        inputs: &x32,
        labels: &labels,
        pairs: &pairs,
    };

    // Draws from the core's real sampler (f64), recorded; SegmenterOnly draws none.
    let mut draw_rng = Xoshiro256PlusPlus::seed_from_u64(0xD2A3_0000 + case.seed);
    let mut rec = Recorder {
        rng: &mut draw_rng,
        kappa: vec![],
        draws: vec![],
        tangents: vec![],
    };
    let sampled = run_loss(&model64, &b64, &cfg64, case.scope, &mut rec, &prev);
    let Recorder {
        kappa,
        draws,
        tangents,
        ..
    } = rec;
    let expected_draws = if case.scope == Scope::SegmenterOnly {
        0
    } else {
        case.batch
    };
    assert_eq!(
        draws.len(),
        expected_draws,
        "{}: one draw per row",
        case.name
    );

    // The same draws replayed, in f64 and f32.
    let mut replay = ReplayDraws {
        draws: &draws,
        tangents: &tangents,
        next: 0,
    };
    let g64 = run_loss(&model64, &b64, &cfg64, case.scope, &mut replay, &prev);
    let draws32: Vec<(f32, f32)> = draws.iter().map(|&(w, d)| (w as f32, d as f32)).collect();
    let tangents32: Vec<f32> = tangents.iter().map(|&v| v as f32).collect();
    let mut replay32 = ReplayDraws {
        draws: &draws32,
        tangents: &tangents32,
        next: 0,
    };
    let g32 = run_loss(&model32, &b32, &cfg32, case.scope, &mut replay32, &prev32);

    // Replaying a recorded draw must reproduce the sampler's own draw (to rounding).
    let e = max_rel_diff(&g64.grads, &sampled.grads);
    assert!(
        e < 1e-9
            && (g64.parts.total - sampled.parts.total).abs()
                <= 1e-10 * sampled.parts.total.abs().max(1.0),
        "{}: replayed draws differ from the sampled ones (grad rel {e:.2e}, total {} vs {})",
        case.name,
        g64.parts.total,
        sampled.parts.total
    );

    let mut bytes = vec![0u8; blob::blob_len(&shape)];
    let n = blob::write(&shape, model32.params(), &mut bytes).expect("blob");
    bytes.truncate(n);
    let crc = blob::crc32(&bytes[..n - 4]);
    let blob_name = format!("{}.hvae", case.name);
    std::fs::write(dir.join(&blob_name), &bytes).unwrap();

    let rows: Vec<Vec<f64>> = x64.chunks(shape.input).map(<[f64]>::to_vec).collect();
    let draws_json = if case.scope == Scope::SegmenterOnly {
        Value::Null
    } else {
        json!({
            "kappa": kappa,
            "w": draws.iter().map(|d| d.0).collect::<Vec<_>>(),
            "dw_dkappa": draws.iter().map(|d| d.1).collect::<Vec<_>>(),
            "v": tangents.chunks(shape.latent - 1).map(<[f64]>::to_vec).collect::<Vec<_>>(),
        })
    };
    let description = format!(
        "{:?}/{:?}/{:?}, D {} hidden {:?} M {} K {}, B {}, {:?}, cluster input {:?}, labels {:?}, {} pairs, lambda {}, rho {}, sigma {}",
        shape.posterior,
        shape.likelihood,
        shape.activation,
        shape.input,
        (0..shape.depth()).map(|l| shape.hidden(l)).collect::<Vec<_>>(),
        shape.latent,
        shape.clusters,
        case.batch,
        case.scope,
        case.cluster_input,
        case.labels,
        pairs.len(),
        case.entropy,
        case.rho,
        case.sigma,
    );
    let doc = json!({
        "name": case.name,
        "description": description,
        "blob": blob_name,
        "crc": crc,
        "inputs": rows,
        "labels": labels,
        "pairs": pairs.iter().map(|&(i, j)| [i, j]).collect::<Vec<_>>(),
        "scope": format!("{:?}", case.scope),
        "config": {
            "beta": cfg64.beta, "gamma": cfg64.gamma, "eta": cfg64.eta,
            "entropy": cfg64.entropy, "sigma": cfg64.sigma,
            "balance_momentum": cfg64.balance_momentum,
            "cluster_input": format!("{:?}", case.cluster_input),
        },
        "p_bar_prev": prev,
        "draws": draws_json,
        "rust": {
            "segment_f32": segment_json(&model32, &x32),
            "segment_f64": segment_json(&model64, &x64),
            "loss_f64": parts_json(&g64.parts),
            "loss_f32": parts_json(&g32.parts),
            "p_bar_f64": f64s(&g64.p_bar),
            "p_bar_f32": f64s(&g32.p_bar),
            "grads_f64": grads_json(&shape, case.scope, &g64.grads),
            "grads_f32": grads_json(&shape, case.scope, &g32.grads),
        },
    });
    let path = dir.join(format!("{}.json", case.name));
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    path
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference")
}

fn run_python(py: &Path, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(py)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn core_matches_the_independent_reference() {
    let Some(py) = reference_python("the Python reference comparison") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = vec![reference_dir().join("compare.py").into()];
    for case in cases() {
        args.push(write_case(&case, dir.path()).into());
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, text) = run_python(&py, &args);
    println!("{text}");
    assert!(
        ok,
        "the core disagrees with the Python reference (tables above); if the error is an \
         ImportError, reinstall host-tools/reference/requirements.txt into the venv"
    );
}

#[test]
fn reference_parses_blobs_and_checks_the_crc() {
    let Some(py) = reference_python("the Python reference comparison") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let case = &cases()[1];
    let model = build_model(case, &mut rng);
    let shape = *model.shape();
    let mut bytes = vec![0u8; blob::blob_len(&shape)];
    let n = blob::write(&shape, model.params(), &mut bytes).unwrap();
    let crc = blob::crc32(&bytes[..n - 4]);
    let good = dir.path().join("good.hvae");
    std::fs::write(&good, &bytes).unwrap();
    let script = reference_dir().join("hvae_ref.py");
    let (ok, text) = run_python(
        &py,
        &[script.as_os_str(), "info".as_ref(), good.as_os_str()],
    );
    assert!(ok, "{text}");
    let info: Value = serde_json::from_str(text.trim()).expect("info is JSON");
    assert_eq!(info["crc"], json!(crc));
    assert_eq!(info["params"], json!(shape.param_len()));
    assert_eq!(info["posterior"], json!("power"));
    assert_eq!(info["hidden"], json!([11, 7]));

    // One flipped bit in a parameter: the reference must refuse the blob.
    bytes[blob::HEADER_LEN + 5] ^= 0x10;
    let bad = dir.path().join("bad.hvae");
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, text) = run_python(&py, &[script.as_os_str(), "info".as_ref(), bad.as_os_str()]);
    assert!(!ok && text.contains("CRC mismatch"), "{text}");
}
