//! `hvae plot`: PNG pictures of a model's latent space and of training curves.

use super::eval::check_sizes;
use super::outln;
use crate::plot::{self, Curves, LatentPoints, MAX_SIZE, MIN_SIZE};
use crate::{data, fsio, model_io, Error};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Long help of the subcommand (`hvae plot --help`).
pub const LONG_ABOUT: &str = "Draw a PNG picture of a model's latent space and/or of its \
    training curves.\n\n\
    With --model and --data: every row's mean direction mu(x) on the sphere S^(M-1), coloured \
    by its cluster (the segmenter's label), with the K centres as large dots in a black ring \
    and a legend of the cluster sizes. M = 2 is drawn on the circle; M = 3 in orthographic \
    projection as two disks (the hemisphere z >= 0 seen from +z, and z < 0 seen from -z); \
    larger M on the plane of the two leading principal axes of the mu's (the share of \
    variance each explains is in the title).\n\n\
    With --curves REPORT.json (written by `hvae train --report`): the loss parts per epoch \
    (parts that are zero throughout are left out; warm-up epochs are shaded) and, when the \
    report has them, ACC and NMI on a 0..1 axis. With both, the two pictures stand side by \
    side.\n\n\
    Text uses a built-in 8x8 bitmap font, so no system font is needed. The size defaults to \
    1000x800 (1800x800 with both pictures); each side must be in 200..=8192. The PNG is \
    written atomically (temporary file, then rename); on any error (exit status 2 for bad \
    input) no file is left.";

/// Arguments of `hvae plot`.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// Model file (weight blob); needs --data.
    #[arg(
        long,
        value_name = "MODEL",
        requires = "data",
        required_unless_present = "curves"
    )]
    pub model: Option<PathBuf>,
    /// Data file whose rows are drawn (CSV with a header, .csv.gz or .npy); needs --model.
    #[arg(long, value_name = "FILE", requires = "model")]
    pub data: Option<PathBuf>,
    /// Training report (`hvae train --report`) whose curves are drawn (with the GMM
    /// candidate, the scores of the model not kept beside the kept one's).
    #[arg(long, value_name = "REPORT.json")]
    pub curves: Option<PathBuf>,
    /// Output PNG file.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// Picture width in pixels.
    #[arg(long, value_name = "PX", value_parser = clap::value_parser!(u32).range(MIN_SIZE as i64..=MAX_SIZE as i64))]
    pub width: Option<u32>,
    /// Picture height in pixels.
    #[arg(long, value_name = "PX", value_parser = clap::value_parser!(u32).range(MIN_SIZE as i64..=MAX_SIZE as i64))]
    pub height: Option<u32>,
}

/// Largest report read: a report is a few kilobytes per hundred epochs.
const MAX_REPORT: u64 = 64 << 20;

fn read_report(path: &Path) -> Result<Curves, Error> {
    let bytes = fsio::read_limited(path, MAX_REPORT, "a training report")?;
    let name = path.display();
    plot::parse_report(&bytes).map_err(|e| Error::BadInput(format!("{name}: {e}")))
}

/// Runs `hvae plot`.
pub fn run(args: &PlotArgs, out: &mut dyn Write) -> Result<(), Error> {
    // Every input is read and checked before anything is drawn or written.
    let latent = match (&args.model, &args.data) {
        (Some(model_path), Some(data_path)) => {
            let loaded = model_io::load(model_path)?;
            let data = data::load(data_path)?;
            if data.is_empty() {
                return Err(Error::BadInput(format!(
                    "{}: no data rows",
                    data_path.display()
                )));
            }
            check_sizes(&loaded.model, model_path, &data, data_path)?;
            Some(
                LatentPoints::from_model(&loaded.model, data.features(), data.dim())
                    .map_err(|e| Error::Failed(e.to_string()))?,
            )
        }
        (None, None) => None,
        // clap's `requires` makes these unreachable from the command line.
        _ => {
            return Err(Error::BadInput(
                "--model and --data go together".to_string(),
            ))
        }
    };
    let curves = args.curves.as_deref().map(read_report).transpose()?;
    if latent.is_none() && curves.is_none() {
        return Err(Error::BadInput(
            "nothing to draw: give --model and --data, or --curves".into(),
        ));
    }
    let both = latent.is_some() && curves.is_some();
    let w = args.width.unwrap_or(if both { 1800 } else { 1000 });
    let h = args.height.unwrap_or(800);
    let png = plot::render(latent.as_ref(), curves.as_ref(), w, h)
        .map_err(|e| Error::Failed(e.to_string()))?;
    fsio::write_bytes_atomic(&args.out, &png)?;
    let what = match (&latent, &curves) {
        (Some(l), Some(c)) => format!(
            "{} latent directions (M = {}) and {} epochs of curves",
            l.len(),
            l.m,
            c.epochs.len()
        ),
        (Some(l), None) => format!("{} latent directions (M = {})", l.len(), l.m),
        (None, Some(c)) => format!("{} epochs of curves", c.epochs.len()),
        (None, None) => String::new(),
    };
    outln!(
        out,
        "wrote {} ({w}x{h} PNG, {} bytes: {what})",
        args.out.display(),
        png.len()
    )
}
