//! `hvae inspect`: what a model file holds and what it needs on a device.

use super::outln;
use crate::export::{activation_name, hidden_widths, likelihood_name, posterior_name};
use crate::model_io;
use crate::quant::Int8Sizes;
use crate::Error;
use hvae::Memory;
use hvae::OptimKind;
use hvae::{Scope, Shape};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae inspect --help`).
pub const LONG_ABOUT: &str = "Show what a model file holds: sizes, posterior, likelihood, \
    activation, parameter count per block, the weights' CRC-32, and the bytes of RAM it \
    needs (f32) for inference and for on-device training in each update scope (Full, \
    EncoderAndSegmenter, SegmenterOnly) with each optimiser (SGD with momentum, Adam, \
    Adam with a factored second moment, the factored second moment alone), counted by the core's hvae::Memory for the stated batch and sample-buffer \
    sizes, and the bytes of its int8 form (hvae export --quantize int8). On an int8 model \
    file: its sizes, CRC and activation scales. A corrupt or foreign file is a one-line \
    error with exit status 2.";

/// Arguments of `hvae inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// Anchors per training step assumed for the training memory.
    #[arg(long, default_value_t = 8, value_name = "B",
          value_parser = clap::value_parser!(u32).range(1..=hvae::train::trainer::MAX_BATCH as i64))]
    pub batch: u32,
    /// Samples in the on-device ring buffer assumed for the training memory.
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub buffer: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Bytes of one memory configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryRow {
    /// Update scope (`Full`, `EncoderAndSegmenter`, `SegmenterOnly`), or `inference`.
    pub scope: String,
    /// Optimiser (`sgd`, `adam`, `factored`, `factored-rms`), or null for inference.
    pub optimiser: Option<String>,
    /// Parameters.
    pub params: usize,
    /// Per-call workspace.
    pub workspace: usize,
    /// Optimiser state.
    pub optimiser_state: usize,
    /// Trainer scratch.
    pub scratch: usize,
    /// Sample buffer.
    pub samples: usize,
    /// Sum.
    pub total: usize,
}

impl MemoryRow {
    fn new(scope: &str, optimiser: Option<&str>, m: &Memory) -> MemoryRow {
        MemoryRow {
            scope: scope.to_string(),
            optimiser: optimiser.map(str::to_string),
            params: m.params,
            workspace: m.workspace,
            optimiser_state: m.optimiser,
            scratch: m.scratch,
            samples: m.samples,
            total: m.total(),
        }
    }
}

/// Parameter counts per block.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamCounts {
    /// Whole vector.
    pub total: usize,
    /// Input normalisation (offset and scale, not trained).
    pub normalisation: usize,
    /// Encoder.
    pub encoder: usize,
    /// Segmenter.
    pub segmenter: usize,
    /// Decoder.
    pub decoder: usize,
    /// The prefix inference needs.
    pub inference: usize,
}

/// A model's architecture as `hvae inspect` and `hvae train --report` print it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShapeReport {
    /// Input size `D`.
    pub input: usize,
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Ambient latent size `M`.
    pub latent: usize,
    /// Clusters `K`.
    pub clusters: usize,
    /// Posterior family.
    pub posterior: String,
    /// Likelihood.
    pub likelihood: String,
    /// Activation.
    pub activation: String,
}

impl ShapeReport {
    /// The report of `s`.
    pub fn of(s: &Shape) -> Self {
        ShapeReport {
            input: s.input,
            hidden: hidden_widths(s),
            latent: s.latent,
            clusters: s.clusters,
            posterior: posterior_name(s.posterior).to_string(),
            likelihood: likelihood_name(s.likelihood).to_string(),
            activation: activation_name(s.activation).to_string(),
        }
    }
}

/// What `hvae inspect` reports of any model file: the file, its blob and the
/// architecture.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileReport {
    /// The file.
    pub file: String,
    /// File size in bytes.
    pub bytes: usize,
    /// Weight blob format version.
    pub format_version: u16,
    /// CRC-32 of the blob, `0x........`.
    pub crc: String,
    /// The architecture (its fields inline in the JSON).
    #[serde(flatten)]
    pub shape: ShapeReport,
}

impl FileReport {
    fn new(file: &str, bytes: usize, format_version: u16, crc: u32, shape: &Shape) -> Self {
        FileReport {
            file: file.to_string(),
            bytes,
            format_version,
            crc: format!("{crc:#010x}"),
            shape: ShapeReport::of(shape),
        }
    }
}

/// The report of `hvae inspect`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InspectReport {
    /// The file, its blob and the architecture (inline in the JSON).
    #[serde(flatten)]
    pub file: FileReport,
    /// Parameter counts.
    pub parameters: ParamCounts,
    /// Workspace scalars per call (`Shape::work_len`).
    pub work_len: usize,
    /// Anchors per training step assumed.
    pub batch: usize,
    /// Ring-buffer samples assumed.
    pub buffer: usize,
    /// Inference, then every scope x optimiser, in bytes of `f32`.
    pub memory: Vec<MemoryRow>,
    /// The sizes of the model's int8 form (`hvae export --quantize int8`); null for a
    /// shape that has none (invalid).
    pub int8: Option<Int8Sizes>,
}

/// The report of `hvae inspect` on an int8 model file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Int8Report {
    /// The file, its blob (format version 2) and the architecture (inline in the JSON).
    #[serde(flatten)]
    pub file: FileReport,
    /// The sizes.
    pub int8: Int8Sizes,
    /// The activation scales `s_0 .. s_L` the model was calibrated with.
    pub activation_scales: Vec<f32>,
}

const SCOPES: [(Scope, &str); 3] = [
    (Scope::Full, "Full"),
    (Scope::EncoderAndSegmenter, "EncoderAndSegmenter"),
    (Scope::SegmenterOnly, "SegmenterOnly"),
];
const OPTIMISERS: [(OptimKind, &str); 4] = [
    (OptimKind::Sgd, "sgd"),
    (OptimKind::Adam, "adam"),
    (OptimKind::Factored, "factored"),
    (OptimKind::FactoredRms, "factored-rms"),
];

/// The memory table of `shape`.
pub fn memory_rows(shape: &Shape, batch: usize, buffer: usize) -> Vec<MemoryRow> {
    let mut rows = vec![MemoryRow::new(
        "inference",
        None,
        &Memory::inference::<f32>(shape),
    )];
    for (scope, sname) in SCOPES {
        for (kind, oname) in OPTIMISERS {
            let m = Memory::training::<f32>(shape, scope, kind, batch, buffer);
            rows.push(MemoryRow::new(sname, Some(oname), &m));
        }
    }
    rows
}

/// Builds the report for a loaded model.
pub fn report(
    file: &str,
    loaded: &model_io::LoadedModel,
    batch: usize,
    buffer: usize,
) -> InspectReport {
    let s = loaded.model.shape();
    InspectReport {
        file: FileReport::new(
            file,
            loaded.bytes,
            hvae::store::blob::VERSION,
            loaded.crc,
            s,
        ),
        parameters: ParamCounts {
            total: s.param_len(),
            normalisation: 2 * s.input,
            encoder: s.encoder_len(),
            segmenter: s.segmenter_len(),
            decoder: s.decoder_len(),
            inference: s.inference_param_len(),
        },
        work_len: s.work_len(),
        batch,
        buffer,
        memory: memory_rows(s, batch, buffer),
        int8: Int8Sizes::of(s),
    }
}

/// `hvae inspect` of an int8 model file.
fn run_int8(args: &InspectArgs, out: &mut dyn Write) -> Result<(), Error> {
    let l = model_io::load_int8(&args.model)?;
    let s = l.model.shape();
    let sizes = Int8Sizes::of(s)
        .ok_or_else(|| Error::Failed("an int8 model without an int8 form".into()))?;
    let r = Int8Report {
        file: FileReport::new(
            &args.model.display().to_string(),
            l.bytes,
            hvae::store::blob::VERSION_INT8,
            l.crc,
            s,
        ),
        int8: sizes,
        activation_scales: l.model.activation_scales().to_vec(),
    };
    if args.json {
        return print_json(&r, out);
    }
    let f = &r.file;
    file_lines(f, "int8 weight blob, format version", out)?;
    outln!(out, "latent      {}", f.shape.latent)?;
    outln!(out, "clusters    {}", f.shape.clusters)?;
    outln!(out, "posterior   {}", f.shape.posterior)?;
    outln!(out, "activation  {}", f.shape.activation)?;
    let (lo, hi) = r
        .activation_scales
        .iter()
        .fold((f32::INFINITY, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
    outln!(
        out,
        "act. scales {} (one per input feature and hidden unit), {lo} .. {hi}",
        r.activation_scales.len()
    )?;
    int8_lines(&r.int8, out)
}

/// The report as one line of JSON.
fn print_json(r: &impl Serialize, out: &mut dyn Write) -> Result<(), Error> {
    let text = serde_json::to_string(r)
        .map_err(|e| Error::Failed(format!("cannot encode the report: {e}")))?;
    outln!(out, "{text}")
}

/// The file, CRC, input and hidden lines of the text report; `blob` names the blob's
/// kind before its format version.
fn file_lines(f: &FileReport, blob: &str, out: &mut dyn Write) -> Result<(), Error> {
    outln!(
        out,
        "file        {} ({} bytes, {blob} {})",
        f.file,
        f.bytes,
        f.format_version
    )?;
    outln!(out, "CRC-32      {}", f.crc)?;
    outln!(out, "input       {}", f.shape.input)?;
    outln!(out, "hidden      {:?}", f.shape.hidden)
}

/// The int8 sizes, as text.
fn int8_lines(z: &Int8Sizes, out: &mut dyn Write) -> Result<(), Error> {
    outln!(
        out,
        "int8 form   {} B = int8 weights {} B + i32 channels {} B + f32 {} B (f32 inference: {} B)",
        z.total_bytes,
        z.weight_bytes,
        z.int_bytes,
        z.float_bytes,
        z.f32_inference_bytes
    )?;
    outln!(
        out,
        "            int8 blob {} B, workspace {} floats per call",
        z.blob_bytes,
        z.work_len
    )
}

/// Runs `hvae inspect`.
pub fn run(args: &InspectArgs, out: &mut dyn Write) -> Result<(), Error> {
    let loaded = match model_io::load(&args.model) {
        Err(e) if model_io::is_int8(&e) => return run_int8(args, out),
        r => r?,
    };
    let r = report(
        &args.model.display().to_string(),
        &loaded,
        args.batch as usize,
        args.buffer as usize,
    );
    if args.json {
        return print_json(&r, out);
    }
    let p = &r.parameters;
    file_lines(&r.file, "weight blob format version", out)?;
    outln!(
        out,
        "latent      {} (the sphere S^{})",
        r.file.shape.latent,
        r.file.shape.latent - 1
    )?;
    outln!(out, "clusters    {}", r.file.shape.clusters)?;
    outln!(out, "posterior   {}", r.file.shape.posterior)?;
    outln!(out, "likelihood  {}", r.file.shape.likelihood)?;
    outln!(out, "activation  {}", r.file.shape.activation)?;
    outln!(
        out,
        "parameters  {} = normalisation {} + encoder {} + segmenter {} + decoder {}",
        p.total,
        p.normalisation,
        p.encoder,
        p.segmenter,
        p.decoder
    )?;
    outln!(
        out,
        "            inference needs the first {} (no decoder)",
        p.inference
    )?;
    outln!(out, "workspace   {} floats per call", r.work_len)?;
    if let Some(z) = &r.int8 {
        int8_lines(z, out)?;
    }
    outln!(out)?;
    outln!(
        out,
        "RAM in bytes (f32 parameters), training with a batch of {} anchors and a buffer of {} samples:",
        r.batch,
        r.buffer
    )?;
    outln!(
        out,
        "{:<20} {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "scope",
        "optimiser",
        "params",
        "workspace",
        "optimiser",
        "scratch",
        "samples",
        "total"
    )?;
    for m in &r.memory {
        outln!(
            out,
            "{:<20} {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            m.scope,
            m.optimiser.as_deref().unwrap_or("-"),
            m.params,
            m.workspace,
            m.optimiser_state,
            m.scratch,
            m.samples,
            m.total
        )?;
    }
    outln!(
        out,
        "(training: the per-call workspace is part of the trainer's scratch; SegmenterOnly \
         keeps no decoder weights)"
    )
}
