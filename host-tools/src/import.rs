//! Importing weights trained elsewhere (PyTorch) from a `safetensors` file.
//!
//! The file must hold exactly the tensors of one hvae architecture, under the names
//! `hvae_ref.py` and the reports use (the names `state_dict()` gives the module in
//! `reference/torch_export.py`). With `D` inputs, hidden widths `h_1..h_L` (`L` in
//! 1..=4), latent `M` and `K` clusters:
//!
//! | name | shape | notes |
//! |---|---|---|
//! | `norm.offset`, `norm.scale` | `[D]` | optional as a pair: absent means offset 0, scale 1 |
//! | `encoder.{l}.weight`, `encoder.{l}.bias` | `[h_{l+1}, h_l]`, `[h_{l+1}]` | `l = 0..L`, `h_0 = D` |
//! | `mu.weight`, `mu.bias` | `[M, h_L]`, `[M]` | |
//! | `kappa.weight`, `kappa.bias` | `[1, h_L]`, `[1]` | |
//! | `segmenter.centres` | `[K, M]` | raw (normalised in the forward pass) |
//! | `segmenter.log_kappa` | `[1]` or `[]` | `ln kappa_s` |
//! | `segmenter.log_weights` | `[K]` | mixing log-weights |
//! | `decoder.{l}.weight`, `decoder.{l}.bias` | `[out, in]`, `[out]` | `l = 0..=L`: `M -> h_L -> ... -> h_1 -> D` |
//!
//! Weights are `out x in` as PyTorch's `nn.Linear` stores them, which is the core's
//! row-major layout, so values are copied without transposition. The sizes are inferred
//! from `encoder.{l}.weight`, `mu.weight` and `segmenter.centres`; every tensor is then
//! checked against them. Values may be `F32` (copied bit for bit) or `F64`, `F16`, `BF16`
//! (converted to `f32`); every converted value must be finite.
//!
//! The kinds come from the header's `__metadata__` (`posterior`: `vmf`|`power`,
//! `likelihood`: `gaussian`|`bernoulli`, `activation`: `relu`|`tanh`; the blob's numeric
//! codes `0`/`1` are accepted too), overridden by the caller's choices; when neither says,
//! the defaults of [`hvae::Shape::new`] apply (vMF, Gaussian, ReLU).

use hvae::infer::model::{Model, VecModel};
use hvae::shape::{Activation, Likelihood, Posterior, Shape, TensorId, MAX_HIDDEN};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeSet, HashMap};

/// Why a safetensors file cannot be imported. `Display` is one line without the file
/// name (the command adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError(msg.into()))
}

/// Where a kind (posterior, likelihood, activation) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindSource {
    /// A command-line flag.
    Flag,
    /// The file's `__metadata__`.
    Metadata,
    /// Neither: the default.
    Default,
}

impl KindSource {
    /// Lower-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            KindSource::Flag => "flag",
            KindSource::Metadata => "metadata",
            KindSource::Default => "default",
        }
    }
}

/// What the caller fixes: kinds that override the metadata, and sizes the file must have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Posterior family (overrides the metadata).
    pub posterior: Option<Posterior>,
    /// Likelihood (overrides the metadata).
    pub likelihood: Option<Likelihood>,
    /// Activation (overrides the metadata).
    pub activation: Option<Activation>,
    /// Required input size `D`.
    pub input: Option<usize>,
    /// Required hidden widths.
    pub hidden: Option<Vec<usize>>,
    /// Required latent size `M`.
    pub latent: Option<usize>,
    /// Required cluster count `K`.
    pub clusters: Option<usize>,
}

/// A successfully imported model and how it was read.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// The model, decoder included.
    pub model: VecModel<f32>,
    /// Where the posterior, likelihood and activation came from.
    pub kind_sources: [KindSource; 3],
    /// Dtypes other than `F32` that were converted, sorted by name.
    pub converted: Vec<String>,
    /// True when the file had no `norm.*` tensors and identity normalisation was used.
    pub default_normalisation: bool,
}

/// The safetensors name of a tensor of the layout.
pub fn tensor_name(id: TensorId) -> String {
    // `TensorId`'s `Display` is the naming of the reference and of the reports.
    id.to_string()
}

/// The `(name, shape)` list a file for `shape` holds, in layout order (PyTorch shapes:
/// vectors are 1-D, weights `[out, in]`).
pub fn expected_tensors(shape: &Shape) -> Vec<(String, Vec<usize>)> {
    shape
        .tensors()
        .map(|t| {
            let dims = if is_vector(t.id) {
                vec![t.cols]
            } else {
                vec![t.rows, t.cols]
            };
            (tensor_name(t.id), dims)
        })
        .collect()
}

/// Biases, normalisation, `kappa.bias` and the segmenter's vectors are 1-D in PyTorch;
/// the core stores them as `1 x n`.
fn is_vector(id: TensorId) -> bool {
    !matches!(
        id,
        TensorId::EncoderWeight(_)
            | TensorId::MuWeight
            | TensorId::KappaWeight
            | TensorId::Centres
            | TensorId::DecoderWeight(_)
    )
}

/// Parses a posterior name or blob code.
pub fn parse_posterior(s: &str) -> Option<Posterior> {
    match s.trim().to_ascii_lowercase().as_str() {
        "vmf" | "0" | "von_mises_fisher" | "von-mises-fisher" => Some(Posterior::VonMisesFisher),
        "power" | "1" | "power_spherical" | "power-spherical" | "ps" => {
            Some(Posterior::PowerSpherical)
        }
        _ => None,
    }
}

/// Parses a likelihood name or blob code.
pub fn parse_likelihood(s: &str) -> Option<Likelihood> {
    match s.trim().to_ascii_lowercase().as_str() {
        "gaussian" | "0" => Some(Likelihood::Gaussian),
        "bernoulli" | "1" => Some(Likelihood::Bernoulli),
        _ => None,
    }
}

/// Parses an activation name or blob code.
pub fn parse_activation(s: &str) -> Option<Activation> {
    match s.trim().to_ascii_lowercase().as_str() {
        "relu" | "0" => Some(Activation::Relu),
        "tanh" | "1" => Some(Activation::Tanh),
        _ => None,
    }
}

/// Resolves one kind: flag, else metadata (which must parse if present), else default.
fn kind<K: Copy>(
    flag: Option<K>,
    meta: Option<&HashMap<String, String>>,
    key: &str,
    parse: fn(&str) -> Option<K>,
    default: K,
    allowed: &str,
) -> Result<(K, KindSource), ImportError> {
    if let Some(k) = flag {
        return Ok((k, KindSource::Flag));
    }
    match meta.and_then(|m| m.get(key)) {
        Some(v) => match parse(v) {
            Some(k) => Ok((k, KindSource::Metadata)),
            None => bad(format!(
                "metadata {key}={v:?} is not one of {allowed} (or pass --{key})"
            )),
        },
        None => Ok((default, KindSource::Default)),
    }
}

/// A 2-D tensor's `[rows, cols]`, or an error naming it.
fn dims2(st: &SafeTensors<'_>, name: &str) -> Result<(usize, usize), ImportError> {
    let t = st
        .tensor(name)
        .map_err(|_| ImportError(format!("missing tensor {name}")))?;
    match t.shape() {
        [r, c] if *r > 0 && *c > 0 => Ok((*r, *c)),
        s => bad(format!(
            "tensor {name} has shape {s:?}, expected a non-empty [out, in] matrix"
        )),
    }
}

/// Checks a size the caller fixed.
fn require(what: &str, flag: Option<usize>, found: usize, from: &str) -> Result<(), ImportError> {
    match flag {
        Some(want) if want != found => bad(format!("--{what} is {want} but {from} gives {found}")),
        _ => Ok(()),
    }
}

/// Converts one tensor's bytes to `f32` values appended to `out`.
fn convert(name: &str, t: &TensorView<'_>, out: &mut [f32]) -> Result<bool, ImportError> {
    let data = t.data();
    let converted = match t.dtype() {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            false
        }
        Dtype::F64 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                // Rounds to nearest; values beyond f32's range become infinite and are
                // rejected below.
                *o = f64::from_le_bytes(a) as f32;
            }
            true
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            true
        }
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            true
        }
        other => {
            return bad(format!(
                "tensor {name} has dtype {other:?}; expected F32 (F64, F16 and BF16 are converted)"
            ))
        }
    };
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return bad(format!(
            "tensor {name} has a non-finite value at flat index {i} ({})",
            out[i]
        ));
    }
    Ok(converted)
}

/// Largest file accepted: far beyond any model a microcontroller holds, small enough
/// that a bogus header cannot make the tool read gigabytes.
pub const MAX_FILE: u64 = 1 << 30;

/// Imports the safetensors bytes `bytes`.
pub fn from_bytes(bytes: &[u8], opts: &ImportOptions) -> Result<Imported, ImportError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ImportError(format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ImportError(format!("not a valid safetensors file: {e}")))?;
    let meta = header.metadata().as_ref();

    // Sizes, from the tensors that fix them.
    let (h1, d) = dims2(&st, "encoder.0.weight")?;
    let mut hidden = vec![h1];
    while hidden.len() < MAX_HIDDEN {
        let name = format!("encoder.{}.weight", hidden.len());
        if st.tensor(&name).is_err() {
            break;
        }
        let (o, i) = dims2(&st, &name)?;
        let prev = hidden[hidden.len() - 1];
        if i != prev {
            return bad(format!(
                "tensor {name} has {i} inputs but the layer before it has {prev} outputs"
            ));
        }
        hidden.push(o);
    }
    if st.tensor(&format!("encoder.{MAX_HIDDEN}.weight")).is_ok() {
        return bad(format!(
            "more than {MAX_HIDDEN} encoder layers (encoder.{MAX_HIDDEN}.weight is present)"
        ));
    }
    let (m, _) = dims2(&st, "mu.weight")?;
    let (k, _) = dims2(&st, "segmenter.centres")?;
    require("input", opts.input, d, "encoder.0.weight")?;
    require("latent", opts.latent, m, "mu.weight")?;
    require("clusters", opts.clusters, k, "segmenter.centres")?;
    if let Some(want) = &opts.hidden {
        if *want != hidden {
            return bad(format!(
                "--hidden is {want:?} but the encoder.*.weight tensors give {hidden:?}"
            ));
        }
    }

    let (posterior, ps) = kind(
        opts.posterior,
        meta,
        "posterior",
        parse_posterior,
        Posterior::VonMisesFisher,
        "vmf, power",
    )?;
    let (likelihood, ls) = kind(
        opts.likelihood,
        meta,
        "likelihood",
        parse_likelihood,
        Likelihood::Gaussian,
        "gaussian, bernoulli",
    )?;
    let (activation, as_) = kind(
        opts.activation,
        meta,
        "activation",
        parse_activation,
        Activation::Relu,
        "relu, tanh",
    )?;
    let shape = Shape::new(d, &hidden, m, k)
        .with_posterior(posterior)
        .with_likelihood(likelihood)
        .with_activation(activation);
    shape
        .validate()
        .map_err(|e| ImportError(format!("the tensors give an invalid architecture: {e}")))?;

    // Names: every expected tensor present (the normalisation pair may be absent), no
    // other tensor.
    let expected = expected_tensors(&shape);
    let present: BTreeSet<&str> = st.names().into_iter().collect();
    let has_offset = present.contains("norm.offset");
    let has_scale = present.contains("norm.scale");
    if has_offset != has_scale {
        let (has, lacks) = if has_offset {
            ("norm.offset", "norm.scale")
        } else {
            ("norm.scale", "norm.offset")
        };
        return bad(format!("tensor {has} is present but {lacks} is missing"));
    }
    let default_normalisation = !has_offset;
    let missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !(present.contains(n) || default_normalisation && n.starts_with("norm.")))
        .collect();
    if !missing.is_empty() {
        return bad(format!(
            "missing tensor{} {} (for D={d}, hidden={hidden:?}, M={m}, K={k})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        ));
    }
    let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let extra: Vec<&str> = present.difference(&known).copied().collect();
    if !extra.is_empty() {
        return bad(format!(
            "unexpected tensor{} {} (for D={d}, hidden={hidden:?}, M={m}, K={k})",
            if extra.len() > 1 { "s" } else { "" },
            extra.join(", ")
        ));
    }

    // Values, in layout order.
    let mut params = vec![0.0f32; shape.param_len()];
    let mut converted = BTreeSet::new();
    for (t, (name, dims)) in shape.tensors().zip(&expected) {
        let dst = &mut params[t.range()];
        let Ok(view) = st.tensor(name) else {
            // Only the normalisation pair may be absent (checked above).
            let fill = if t.id == TensorId::NormScale {
                1.0
            } else {
                0.0
            };
            dst.fill(fill);
            continue;
        };
        // A one-value vector may also be a 0-d scalar (`nn.Parameter(torch.tensor(x))`).
        let scalar_ok = dims.as_slice() == [1] && view.shape().is_empty();
        if view.shape() != dims.as_slice() && !scalar_ok {
            return bad(format!(
                "tensor {name} has shape {:?}, expected {dims:?}",
                view.shape()
            ));
        }
        if convert(name, &view, dst)? {
            converted.insert(format!("{name} ({:?})", view.dtype()));
        }
    }
    let model = Model::new(shape, params)
        .map_err(|e| ImportError(format!("the tensors do not form a model: {e}")))?;
    Ok(Imported {
        model,
        kind_sources: [ps, ls, as_],
        converted: converted.into_iter().collect(),
        default_normalisation,
    })
}
