//! `hvae export`: a model as the blob, a Rust source file or a C header.

use super::outln;
use crate::export::{self, Format};
use crate::{fsio, model_io, Error};
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae export --help`).
pub const LONG_ABOUT: &str = "Write a model in a form the firmware can use.\n\n\
    bin: the weight blob, byte for byte (load it at run time with hvae::store::blob::read_params).\n\
    rust: a source file to include!: `pub const SHAPE: hvae::Shape` (built with the const \
    fns), PARAM_LEN, INFERENCE_PARAM_LEN, BLOB_CRC and `pub static PARAMS: [f32; PARAM_LEN]` \
    with every value printed so that it parses back to the exact same f32.\n\
    c: a header with #defines for the sizes, kinds, lengths, CRC and every tensor's offset, \
    rows and columns, and `static const float hvae_params[HVAE_PARAM_LEN]`.\n\n\
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
}

/// Runs `hvae export`.
pub fn run(args: &ExportArgs, out: &mut dyn Write) -> Result<(), Error> {
    let loaded = model_io::load(&args.model)?;
    let source = args.model.display().to_string();
    let (bytes, what) = match args.format {
        Format::Bin => (
            model_io::to_bytes(&loaded.model)
                .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?,
            "weight blob",
        ),
        Format::Rust => (
            export::rust_source(&loaded.model, loaded.crc, &source).into_bytes(),
            "Rust source",
        ),
        Format::C => (
            export::c_header(&loaded.model, loaded.crc, &source).into_bytes(),
            "C header",
        ),
    };
    fsio::write_bytes_atomic(&args.out, &bytes)?;
    outln!(
        out,
        "wrote {} ({what}, {} bytes, {} parameters, CRC {:#010x})",
        args.out.display(),
        bytes.len(),
        loaded.model.params().len(),
        loaded.crc
    )
}
