//! `hvae export`: a model as the blob, a Rust source file or a C header.

use super::outln;
use crate::export::{self, Format};
use crate::{fsio, model_io, quant, Error};
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae export --help`).
pub const LONG_ABOUT: &str = "Write a model in a form the firmware can use.\n\n\
    bin: the weight blob, byte for byte (load it at run time with hvae::store::blob::read_params).\n\
    rust: a source file to include!: one invocation of hvae::exported_model! (the shape, \
    the blob's CRC and the values), which defines `pub const SHAPE: hvae::Shape`, PARAM_LEN, \
    INFERENCE_PARAM_LEN, BLOB_CRC and `pub static PARAMS: [f32; PARAM_LEN]`, with every \
    value printed so that it parses back to the exact same f32.\n\
    c: a header with #defines for the sizes, kinds, lengths, CRC and every tensor's offset, \
    rows and columns, and `static const float hvae_params[HVAE_PARAM_LEN]`.\n\n\
    --quantize int8 --data FILE: the int8 form instead (symmetric per-channel int8 \
    weights, i32 accumulators, fixed-point requantisation; the segmenter stays f32), \
    calibrated on the rows of FILE (the training data: the largest activation of each \
    layer). bin is then the int8 blob (format version 2, hvae::store::blob::read_int8), \
    rust one invocation of hvae::exported_quant_model! (the int8 arrays WEIGHTS: [i8; _], INTS: [i32; _], FLOATS: [f32; _] for \
    hvae::QuantModel::new), c the same arrays as int8_t, int32_t and float. The fidelity of \
    the int8 model to the f32 one on FILE is printed (label agreement, worst and mean mu \
    cosine, ACC and NMI of both when FILE has labels); --check makes a missed bar \
    (agreement >= 0.99, worst cosine >= 0.99, mean >= 0.999, ACC/NMI drop <= 0.01) an \
    error.\n\n\
    The output is written to a temporary file and renamed into place: no partial file is \
    ever left behind.";

/// Arguments of `hvae export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Export the int8 form (needs --data).
    #[arg(long, value_enum, value_name = "KIND", requires = "data")]
    pub quantize: Option<Quantize>,
    /// Calibration data for --quantize (CSV or .npy; a label column is used for ACC/NMI).
    #[arg(long, value_name = "FILE", requires = "quantize")]
    pub data: Option<PathBuf>,
    /// With --quantize: fail (exit status 1, no file written) when the int8 model misses
    /// a fidelity bar on --data.
    #[arg(long, requires = "quantize")]
    pub check: bool,
}

/// A quantised form of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    /// Symmetric per-channel int8 weights, int8 activations.
    Int8,
}

/// Runs `hvae export`.
pub fn run(args: &ExportArgs, out: &mut dyn Write) -> Result<(), Error> {
    let loaded = model_io::load(&args.model)?;
    if let (Some(Quantize::Int8), Some(data)) = (args.quantize, &args.data) {
        return run_int8(args, &loaded, data, out);
    }
    let source = args.model.display().to_string();
    let blob = model_io::to_bytes(&loaded.model)
        .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?;
    let (bytes, what) = match args.format {
        Format::Bin => (blob, "weight blob"),
        Format::Rust => (rust_source(&blob, &source)?, "Rust source"),
        Format::C => (
            export::c_header(&loaded.model, loaded.crc, &source).into_bytes(),
            "C header",
        ),
    };
    let sizes = format!(", {} parameters,", loaded.model.params().len());
    write_out(args, out, &bytes, what, &sizes, loaded.crc)
}

/// Writes `bytes` to `--out` and says so: what they are, their length, `sizes` (its own
/// punctuation around it) and the CRC.
fn write_out(
    args: &ExportArgs,
    out: &mut dyn Write,
    bytes: &[u8],
    what: &str,
    sizes: &str,
    crc: u32,
) -> Result<(), Error> {
    fsio::write_bytes_atomic(&args.out, bytes)?;
    outln!(
        out,
        "wrote {} ({what}, {} bytes{sizes} CRC {crc:#010x})",
        args.out.display(),
        bytes.len()
    )
}

/// `hvae export --quantize int8`.
fn run_int8(
    args: &ExportArgs,
    loaded: &model_io::LoadedModel,
    data: &std::path::Path,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let d = crate::data::load(data)?;
    let q = quant::quantise(&loaded.model, d.features(), d.dim())
        .map_err(|e| Error::BadInput(format!("{}: {e}", data.display())))?;
    let blob = quant::to_bytes(&q)
        .map_err(|e| Error::Failed(format!("cannot encode the int8 model: {e}")))?;
    let crc = model_io::crc_of(&blob);
    let fid = quant::fidelity(&loaded.model, &q, d.features(), d.labels());
    outln!(
        out,
        "int8 fidelity on {} ({} rows): {}",
        data.display(),
        fid.rows,
        fid.line()
    )?;
    let missed = fid.failures();
    if args.check && !missed.is_empty() {
        return Err(Error::Failed(format!(
            "the int8 model misses the fidelity bars: {}",
            missed.join("; ")
        )));
    }
    let source = args.model.display().to_string();
    let (bytes, what) = match args.format {
        Format::Bin => (blob, "int8 weight blob"),
        Format::Rust => (rust_source(&blob, &source)?, "Rust source, int8"),
        Format::C => (
            export::c_header_int8(&q, crc, &source).into_bytes(),
            "C header, int8",
        ),
    };
    let sizes = format!(
        "; int8 weights {} B, i32 {} B, f32 {} B;",
        q.weights().len(),
        4 * q.ints().len(),
        4 * q.floats().len()
    );
    write_out(args, out, &bytes, what, &sizes, crc)
}

/// The Rust source of `blob` (`f32` or int8), by the core's writer.
fn rust_source(blob: &[u8], source: &str) -> Result<Vec<u8>, Error> {
    hvae::infer::exported::rust_source(blob, source)
        .map(String::into_bytes)
        .map_err(|e| Error::Failed(format!("cannot write the Rust source: {e}")))
}
