//! `hvae demo`: the README's main job on the bundled digits.

use super::outln;
use super::{eval, export, train};
use crate::Error;
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae demo --help`).
pub const LONG_ABOUT: &str = "The main job on the bundled data set (scikit-learn's 8x8 digits, \
    1797 x 64, 10 classes): train a model with the defaults, score it against k-means and \
    spherical k-means on the same data, and export it as a blob, a Rust source file and a \
    C header, all into --out-dir; then run it on the emulated device: build the firmware's \
    `cluster` program with the exported blob compiled in (HVAE_MODEL), start it \
    under qemu (mps2-an386, Cortex-M4F) and validate it against the host on every row (as \
    `hvae validate` does). Without qemu-system-arm or the device target the last step says \
    so and is skipped; the host part still succeeds. Prints each step's result.";

/// The bundled digits (CSV, gzipped, with a `label` column).
pub fn bundled_digits() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv.gz"))
}

/// Arguments of `hvae demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the model, report and exports go.
    #[arg(long, default_value = "target/hvae-demo", value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Seed of training.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Skip the run on the emulated device.
    #[arg(long)]
    pub no_device: bool,
}

/// Runs `hvae demo`.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<(), Error> {
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| Error::Failed(format!("cannot create {}: {e}", args.out_dir.display())))?;
    let data = bundled_digits();
    let model = args.out_dir.join("digits.hvae");
    outln!(
        out,
        "== 1. train on {} (defaults, seed {})",
        data.display(),
        args.seed
    )?;
    let mut options = vec!["--seed".to_string(), args.seed.to_string()];
    options.push("--report".into());
    options.push(args.out_dir.join("report.json").display().to_string());
    if args.quiet {
        options.push("--quiet".into());
    }
    let train_args = train::args_with(&data, "10", &model, &options)?;
    train::run(&train_args, out)?;
    outln!(out, "\n== 2. evaluate against the baselines")?;
    eval::run(
        &eval::EvalArgs {
            model: model.clone(),
            data: data.clone(),
            json: false,
            seed: 0,
            restarts: 10,
        },
        out,
    )?;
    outln!(out, "\n== 3. export for the firmware")?;
    for (format, file) in [
        (crate::export::Format::Bin, "digits.bin"),
        (crate::export::Format::Rust, "digits_model.rs"),
        (crate::export::Format::C, "digits_model.h"),
    ] {
        export::run(
            &export::ExportArgs {
                model: model.clone(),
                format,
                out: args.out_dir.join(file),
                quantize: None,
                data: None,
                check: false,
            },
            out,
        )?;
    }
    if args.no_device {
        return Ok(());
    }
    outln!(
        out,
        "\n== 4. run on the emulated device (qemu mps2-an386, Cortex-M4F)"
    )?;
    run_on_device(args, &model, &args.out_dir.join("digits.bin"), &data, out)
}

/// Builds `cluster` with the exported model compiled in, runs it under qemu and
/// validates it on every row. Missing qemu or a firmware that cannot be built is said
/// plainly and is not an error (the host part stands on its own); a device that
/// disagrees with the host is.
fn run_on_device(
    args: &DemoArgs,
    model_path: &std::path::Path,
    blob: &std::path::Path,
    data_path: &std::path::Path,
    out: &mut dyn Write,
) -> Result<(), Error> {
    use crate::device::qemu::{self, Launch, Machine};
    use crate::device::{firmware, Device, Timeouts};
    if !qemu::available() {
        return outln!(
            out,
            "skipped: qemu-system-arm is not installed (install it to run the model on the \
             emulated Cortex-M4F); the host part above is complete"
        );
    }
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    // A target directory of the demo's own: the firmware built with this model does not
    // replace the default build (the compiled-in digits model) that tests use.
    let target_dir = absolute(&args.out_dir.join("firmware-target"));
    let blob = absolute(blob);
    let envs = [
        ("HVAE_MODEL", blob.as_os_str()),
        ("CARGO_TARGET_DIR", target_dir.as_os_str()),
    ];
    let machine = Machine::Mps2An386;
    let elf = match firmware::build(&firmware::default_dir(), "cluster", machine, &envs) {
        Ok(e) => e,
        Err(e) => {
            return outln!(
                out,
                "skipped: {e} (add the target with `rustup target add {}`); the host part above \
                 is complete",
                machine.target()
            )
        }
    };
    outln!(out, "firmware: {}", elf.display())?;
    let (_qemu, link) = Launch::new(machine, elf).connect().map_err(Error::Failed)?;
    let mut dev = Device::new(link, Timeouts::default());
    let loaded = crate::model_io::load(model_path)?;
    let data = crate::data::load(data_path)?;
    let report = super::validate::validate_on(
        &mut dev,
        &loaded,
        model_path,
        &data,
        None,
        super::validate::Thresholds::default(),
    )?;
    super::validate::print_report(&report, false, out)?;
    if report.pass {
        outln!(
            out,
            "the emulated device agrees with the host on {} of {} labels",
            report.labels.agree,
            report.labels.compared
        )
    } else {
        Err(Error::Failed(format!(
            "the emulated device disagrees with the host: {}",
            report.failures.join("; ")
        )))
    }
}
