//! The command line: `hvae <command> [options]`.
//!
//! Each subcommand's arguments and its `run` function live in [`crate::commands`]; this
//! module only assembles them. [`run`] writes results to the given stream and returns
//! an [`Error`] (one line, with an exit status) on failure; `main` prints it.

use crate::commands::{demo, eval, export, import, inspect, plot, predict, suite, train, validate};
use crate::Error;
use clap::{Parser, Subcommand};
use std::io::Write;

/// Hyperspherical-VAE clustering models for microcontrollers: evaluate, inspect and
/// export them.
#[derive(Debug, Parser)]
#[command(
    name = "hvae",
    version,
    about = "Hyperspherical-VAE clustering models for microcontrollers: evaluate, inspect, export",
    long_about = "Hyperspherical-VAE clustering models for microcontrollers.\n\n\
        A model file is the core crate's weight blob (magic HVAE, CRC-32 trailer). Data files \
        are CSV with a header line (plain or gzipped; a column named `label` holds integer \
        class labels and is never used as a feature) or 2-D float .npy arrays.\n\n\
        Exit status: 0 success, 2 bad input (unreadable or invalid data or model file, \
        sizes that do not match), 1 any other failure. Errors are one line on stderr."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job on the bundled digits: train, evaluate against baselines, export.
    #[command(long_about = demo::LONG_ABOUT)]
    Demo(demo::DemoArgs),
    /// Train a model on a data file (normalisation, neighbours and centres fitted on it).
    #[command(long_about = train::LONG_ABOUT)]
    Train(train::TrainArgs),
    /// Score a model's clusters (ACC, NMI, ARI) on labelled data, beside k-means and
    /// spherical k-means run on the same data, and report the mean novelty.
    #[command(long_about = eval::LONG_ABOUT)]
    Eval(eval::EvalArgs),
    /// Write the model's answer for every row of a data file (label, cluster
    /// probabilities, novelty, kappa, mu), streamed: CSV, JSON Lines or .npy.
    #[command(long_about = predict::LONG_ABOUT)]
    Predict(predict::PredictArgs),
    /// Show a model file's sizes, kinds, parameter count, memory needs and CRC.
    #[command(long_about = inspect::LONG_ABOUT)]
    Inspect(inspect::InspectArgs),
    /// Write a model as the binary blob, a Rust source file or a C header.
    #[command(long_about = export::LONG_ABOUT)]
    Export(export::ExportArgs),
    /// Convert weights trained elsewhere (PyTorch) from a safetensors file into a model.
    #[command(long_about = import::LONG_ABOUT)]
    Import(import::ImportArgs),
    /// Draw the latent directions on the sphere by cluster, and training curves, as PNG.
    #[command(long_about = plot::LONG_ABOUT)]
    Plot(plot::PlotArgs),
    /// Run a model on a device (qemu or a board on a serial port) and compare its
    /// outputs with the host's.
    #[command(long_about = validate::LONG_ABOUT)]
    Validate(validate::ValidateArgs),
    /// Train on the device (the firmware's `learn`) with each scope and compare with the
    /// same schedule run on the host.
    #[command(long_about = crate::commands::device_train::LONG_ABOUT)]
    DeviceTrain(crate::commands::device_train::DeviceTrainArgs),
    /// Run the clustering quality suite: the defaults on every data set over several
    /// seeds, beside classical methods.
    #[command(long_about = suite::LONG_ABOUT)]
    Suite(suite::SuiteArgs),
}

/// Runs one command, writing its results to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    match &cli.command {
        Command::Train(a) => train::run(a, out),
        Command::Demo(a) => demo::run(a, out),
        Command::Eval(a) => eval::run(a, out),
        Command::Predict(a) => predict::run(a, out),
        Command::Inspect(a) => inspect::run(a, out),
        Command::Export(a) => export::run(a, out),
        Command::Import(a) => import::run(a, out),
        Command::Plot(a) => plot::run(a, out),
        Command::Validate(a) => validate::run(a, out),
        Command::DeviceTrain(a) => crate::commands::device_train::run(a, out),
        Command::Suite(a) => suite::run(a, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
