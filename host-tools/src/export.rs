//! A model as a file the firmware can use: the weight blob, a Rust source file or a C
//! header.
//!
//! - [`Format::Bin`]: the blob itself ([`hvae::store::blob`]), byte for byte what `hvae`
//!   model files hold, to load at run time with `blob::read_params`.
//! - [`Format::Rust`]: a source file to `include!` in the firmware: one invocation of
//!   the core's `hvae::exported_model!` (`hvae::exported_quant_model!` for the int8
//!   model) with the shape, `BLOB_CRC` (the CRC the blob of these weights carries, which
//!   the device reports as the weights' identity) and the values in layout order; the
//!   macro defines `SHAPE`, the lengths and `pub static PARAMS: [f32; PARAM_LEN]`.
//!   Values are printed in Rust's shortest round-trip form (`{:?}`), which the compiler
//!   parses back to the same `f32` bits.
//! - [`Format::C`]: a header with `#define`s for the sizes, kinds, lengths, CRC and
//!   the offset and size of every tensor, and `static const float hvae_params[]`; each
//!   value is the same shortest decimal with an `f` suffix, which a C compiler rounds to
//!   the same `float`.
//!
//! The source is produced in memory; the caller writes it atomically.

use crate::quant::QuantVecModel;
use hvae::shape::{Shape, TensorId};
use hvae::Model;
use hvae::{Activation, Likelihood, Posterior};
use std::fmt::Write as _;

/// Output format of `hvae export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The weight blob (binary).
    Bin,
    /// A Rust source file for `include!`.
    Rust,
    /// A C header.
    C,
}

/// Values per line in the generated arrays.
const PER_LINE: usize = 6;

/// The variant name of a posterior, as the core's export macros take it.
fn rust_posterior(p: Posterior) -> &'static str {
    match p {
        Posterior::VonMisesFisher => "VonMisesFisher",
        Posterior::PowerSpherical => "PowerSpherical",
    }
}

fn rust_likelihood(l: Likelihood) -> &'static str {
    match l {
        Likelihood::Gaussian => "Gaussian",
        Likelihood::Bernoulli => "Bernoulli",
    }
}

fn rust_activation(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "Relu",
        Activation::Tanh => "Tanh",
    }
}

/// Human name of a posterior.
pub fn posterior_name(p: Posterior) -> &'static str {
    match p {
        Posterior::VonMisesFisher => "von Mises-Fisher",
        Posterior::PowerSpherical => "Power Spherical",
    }
}

/// Human name of a likelihood.
pub fn likelihood_name(l: Likelihood) -> &'static str {
    match l {
        Likelihood::Gaussian => "Gaussian",
        Likelihood::Bernoulli => "Bernoulli",
    }
}

/// Human name of an activation.
pub fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "ReLU",
        Activation::Tanh => "tanh",
    }
}

/// The blob's posterior code (`0` vMF, `1` Power Spherical).
pub fn posterior_code(p: Posterior) -> u8 {
    match p {
        Posterior::VonMisesFisher => 0,
        Posterior::PowerSpherical => 1,
    }
}

/// The blob's likelihood code (`0` Gaussian, `1` Bernoulli).
pub fn likelihood_code(l: Likelihood) -> u8 {
    match l {
        Likelihood::Gaussian => 0,
        Likelihood::Bernoulli => 1,
    }
}

/// The blob's activation code (`0` ReLU, `1` tanh).
pub fn activation_code(a: Activation) -> u8 {
    match a {
        Activation::Relu => 0,
        Activation::Tanh => 1,
    }
}

/// The hidden widths of a shape.
pub fn hidden_widths(s: &Shape) -> Vec<usize> {
    (0..s.depth()).map(|l| s.hidden(l)).collect()
}

/// One `f32` as Rust prints it with `{:?}`: the shortest decimal that parses back to the
/// same bits (`1.0`, `-0.0`, `1e-7`, `0.1`).
pub fn float_literal(v: f32) -> String {
    format!("{v:?}")
}

/// Writes `values` as comma-separated literals, [`PER_LINE`] to a line, each line after
/// `indent`.
fn push_values(out: &mut String, values: &[f32], suffix: &str, indent: &str) {
    for chunk in values.chunks(PER_LINE) {
        out.push_str(indent);
        let line: Vec<String> = chunk
            .iter()
            .map(|&v| format!("{}{suffix}", float_literal(v)))
            .collect();
        out.push_str(&line.join(", "));
        out.push_str(",\n");
    }
}

/// Indent of the values in a Rust source: inside the macro's array.
const RUST_INDENT: &str = "        ";

/// The Rust source for `model` (see the module docs); `source` names the model file in
/// the header comment and `crc` is the blob's CRC.
pub fn rust_source<S: AsRef<[f32]>>(model: &Model<f32, S>, crc: u32, source: &str) -> String {
    let mut out = rust_opening(model.shape(), crc, source, "", "exported_model");
    out.push_str("    params: [\n");
    push_values(&mut out, model.params(), "", RUST_INDENT);
    out.push_str("    ],\n}\n");
    out
}

/// The opening of a Rust source, up to its arrays: the header comment (`flags` are the
/// export's options after `hvae export`), the invocation of the core's `macro_name`,
/// the shape and the CRC.
fn rust_opening(s: &Shape, crc: u32, source: &str, flags: &str, macro_name: &str) -> String {
    // Plain comments only: `include!` does not accept inner doc comments.
    let hidden: Vec<String> = hidden_widths(s).iter().map(|h| h.to_string()).collect();
    format!(
        "// Generated by `hvae export {flags}--format rust` from {}. Do not edit. Items: hvae::{macro_name}.\n\
         hvae::{macro_name}! {{\n    \
         shape: ({}, [{}], {}, {}, {}, {}, {}),\n    \
         blob_crc: {crc:#010x},\n",
        one_line_comment(source),
        s.input,
        hidden.join(", "),
        s.latent,
        s.clusters,
        rust_activation(s.activation),
        rust_posterior(s.posterior),
        rust_likelihood(s.likelihood),
    )
}

/// Writes integers, [`PER_LINE`] * 2 to a line, each line after `indent`.
fn push_ints<T: std::fmt::Display>(out: &mut String, values: &[T], indent: &str) {
    for chunk in values.chunks(2 * PER_LINE) {
        out.push_str(indent);
        let line: Vec<String> = chunk.iter().map(|v| v.to_string()).collect();
        out.push_str(&line.join(", "));
        out.push_str(",\n");
    }
}

/// The Rust source of an int8 model: one invocation of the core's
/// `hvae::exported_quant_model!` with its shape, `BLOB_CRC` (of its int8 blob) and the
/// values of `WEIGHTS`, `INTS` and `FLOATS`, to wrap with
/// `hvae::QuantModel::new(SHAPE, &WEIGHTS[..], &INTS[..], &FLOATS[..])`.
pub fn rust_source_int8(q: &QuantVecModel, crc: u32, source: &str) -> String {
    let mut out = rust_opening(
        q.shape(),
        crc,
        source,
        "--quantize int8 ",
        "exported_quant_model",
    );
    out.push_str("    weights: [\n");
    push_ints(&mut out, q.weights(), RUST_INDENT);
    out.push_str("    ],\n    ints: [\n");
    push_ints(&mut out, q.ints(), RUST_INDENT);
    out.push_str("    ],\n    floats: [\n");
    push_values(&mut out, q.floats(), "", RUST_INDENT);
    out.push_str("    ],\n}\n");
    out
}

/// The C header of an int8 model: sizes, the float layout's offsets, and
/// `static const int8_t hvae_weights[]`, `int32_t hvae_ints[]`, `float hvae_floats[]`.
pub fn c_header_int8(q: &QuantVecModel, crc: u32, source: &str) -> String {
    let s = q.shape();
    let at = q.layout();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/* Generated by `hvae export --quantize int8 --format c` from {}. Do not edit.\n * \
         int8 model: per hidden layer l, out_j = clamp((acc_j * mult_j + 2^(shift_j - 1)) >> shift_j, 0, 127)\n * \
         with acc_j = bias_j + sum_i w_ji x_i (int32) and the product in int64; see hvae's docs/design.md. */\n\
         #ifndef HVAE_MODEL_INT8_H\n#define HVAE_MODEL_INT8_H\n\n#include <stdint.h>\n",
        one_line_comment(source).replace("*/", "* /")
    );
    let mut defs: Vec<(String, String)> = vec![
        ("HVAE_INPUT".into(), s.input.to_string()),
        ("HVAE_DEPTH".into(), s.depth().to_string()),
        ("HVAE_LATENT".into(), s.latent.to_string()),
        ("HVAE_CLUSTERS".into(), s.clusters.to_string()),
        ("HVAE_WEIGHT_LEN".into(), q.weights().len().to_string()),
        ("HVAE_INT_LEN".into(), q.ints().len().to_string()),
        ("HVAE_FLOAT_LEN".into(), q.floats().len().to_string()),
        ("HVAE_BLOB_CRC".into(), format!("{crc:#010x}u")),
    ];
    let (mut wo, mut io) = (0, 0);
    for l in 0..s.depth() {
        let (o, i) = s.encoder_layer(l);
        defs.push((format!("HVAE_HIDDEN_{l}"), o.to_string()));
        defs.push((format!("HVAE_LAYER_{l}_WEIGHT_OFFSET"), wo.to_string()));
        defs.push((format!("HVAE_LAYER_{l}_CHANNEL_OFFSET"), io.to_string()));
        wo += o * i;
        io += 3 * o;
    }
    defs.push(("HVAE_MU_WEIGHT_OFFSET".into(), wo.to_string()));
    defs.push(("HVAE_MU_BIAS_OFFSET".into(), io.to_string()));
    for (name, v) in [
        ("OFFSET", at.offset),
        ("INPUT_MULT", at.input_mult),
        ("WEIGHT_SCALES", at.weight_scales),
        ("ACT_SCALES", at.act_scales),
        ("MU_SCALES", at.mu_scales),
        ("KAPPA", at.kappa),
        ("SEGMENTER", at.segmenter),
    ] {
        defs.push((format!("HVAE_FLOATS_{name}"), v.to_string()));
    }
    for (name, value) in &defs {
        let _ = writeln!(out, "#define {name} {value}");
    }
    out.push_str("\nstatic const int8_t hvae_weights[HVAE_WEIGHT_LEN] = {\n");
    push_ints(&mut out, q.weights(), "    ");
    out.push_str("};\n\nstatic const int32_t hvae_ints[HVAE_INT_LEN] = {\n");
    // INT32_MIN cannot be written as a literal; the checks keep every value above it.
    push_ints(&mut out, q.ints(), "    ");
    out.push_str("};\n\nstatic const float hvae_floats[HVAE_FLOAT_LEN] = {\n");
    push_values(&mut out, q.floats(), "f", "    ");
    out.push_str("};\n\n#endif /* HVAE_MODEL_INT8_H */\n");
    out
}

/// A C identifier fragment for a tensor: `encoder.0.weight` -> `ENCODER_0_WEIGHT`.
pub fn c_tensor_name(id: TensorId) -> String {
    id.to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The C header for `model` (see the module docs).
pub fn c_header<S: AsRef<[f32]>>(model: &Model<f32, S>, crc: u32, source: &str) -> String {
    let s = model.shape();
    let p = model.params();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/* Generated by `hvae export --format c` from {}. Do not edit.\n * \
         Weights are row-major (out x in), in hvae::shape layout order. */\n\
         #ifndef HVAE_MODEL_H\n#define HVAE_MODEL_H\n",
        one_line_comment(source).replace("*/", "* /")
    );
    let defs: Vec<(String, String, &str)> = vec![
        ("HVAE_INPUT".into(), s.input.to_string(), "input size D"),
        ("HVAE_DEPTH".into(), s.depth().to_string(), "hidden layers"),
        (
            "HVAE_LATENT".into(),
            s.latent.to_string(),
            "latent size M (sphere S^(M-1))",
        ),
        ("HVAE_CLUSTERS".into(), s.clusters.to_string(), "clusters K"),
        (
            "HVAE_POSTERIOR".into(),
            posterior_code(s.posterior).to_string(),
            "0 von Mises-Fisher, 1 Power Spherical",
        ),
        (
            "HVAE_LIKELIHOOD".into(),
            likelihood_code(s.likelihood).to_string(),
            "0 Gaussian, 1 Bernoulli",
        ),
        (
            "HVAE_ACTIVATION".into(),
            activation_code(s.activation).to_string(),
            "0 ReLU, 1 tanh",
        ),
        ("HVAE_PARAM_LEN".into(), p.len().to_string(), "parameters"),
        (
            "HVAE_INFERENCE_PARAM_LEN".into(),
            s.inference_param_len().to_string(),
            "parameters inference needs (a prefix)",
        ),
        (
            "HVAE_WORK_LEN".into(),
            s.work_len().to_string(),
            "workspace floats per call",
        ),
        (
            "HVAE_BLOB_CRC".into(),
            format!("{crc:#010x}u"),
            "CRC-32 of the weight blob",
        ),
    ];
    let mut defs = defs;
    for l in 0..s.depth() {
        defs.insert(
            2 + l,
            (
                format!("HVAE_HIDDEN_{l}"),
                s.hidden(l).to_string(),
                "hidden width",
            ),
        );
    }
    for (name, value, what) in &defs {
        let _ = writeln!(out, "#define {name} {value} /* {what} */");
    }
    out.push_str("\n/* Layout: offset, rows and columns of each tensor in hvae_params. */\n");
    for t in s.tensors() {
        let n = c_tensor_name(t.id);
        let _ = writeln!(out, "#define HVAE_{n}_OFFSET {}", t.offset);
        let _ = writeln!(out, "#define HVAE_{n}_ROWS {}", t.rows);
        let _ = writeln!(out, "#define HVAE_{n}_COLS {}", t.cols);
    }
    out.push_str("\nstatic const float hvae_params[HVAE_PARAM_LEN] = {\n");
    push_values(&mut out, p, "f", "    ");
    out.push_str("};\n\n#endif /* HVAE_MODEL_H */\n");
    out
}

/// `s` made safe for a one-line comment.
fn one_line_comment(s: &str) -> String {
    crate::error::one_line(s)
}
