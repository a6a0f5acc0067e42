//! The std side of hvae: the `hvae` command-line tool and the pieces it is built from.
//!
//! Every computation on a model goes through the core crate ([`hvae`]); this crate only
//! reads and writes files, computes clustering scores and runs the baselines.
//!
//! | module | job |
//! |---|---|
//! | [`data`] | load a data set (CSV with a header, `.csv.gz`, `.npy`), write CSV |
//! | [`synth`] | a seeded mixture of von Mises-Fisher clusters with known labels |
//! | [`train`] | training on the host: epochs over a data set in memory |
//! | [`pca`] | wide inputs trained on their leading principal components, folded back |
//! | [`metrics`] | ACC (Hungarian matching), NMI, ARI |
//! | [`baselines`] | k-means on the raw features, spherical k-means |
//! | [`device`] | talk to a device (qemu or a serial port): requests, faults, weights |
//! | [`model_io`] | load and save a model's weight blob |
//! | [`quant`] | the int8 form of a model: calibration, its blob, fidelity to the `f32` model |
//! | [`import`] | a model from a PyTorch `safetensors` file |
//! | [`select`] | restarts and the number of clusters, chosen without labels |
//! | [`suite`] | the clustering quality suite: data sets, classical results, regressions |
//! | [`plot`] | PNG figures: latent directions by cluster, training curves |
//! | [`export`] | a model as a blob, a Rust source file or a C header |
//! | [`fsio`] | write a file atomically (temporary file, then rename) |
//! | [`cli`] | the command line: arguments and subcommands |
//! | [`error`] | the tool's error type and exit statuses |

#[cfg(feature = "tool")]
pub mod baselines;
#[cfg(feature = "tool")]
pub mod cli;
#[cfg(feature = "tool")]
pub mod commands;
pub mod data;
#[cfg(feature = "tool")]
pub mod device;
pub mod error;
#[cfg(feature = "tool")]
pub mod export;
pub mod fsio;
#[cfg(feature = "tool")]
pub mod import;
pub mod metrics;
pub mod model_io;
pub mod pca;
#[cfg(feature = "tool")]
pub mod plot;
pub mod quant;
pub mod select;
#[cfg(feature = "tool")]
pub mod suite;
pub mod synth;
pub mod train;

pub use error::Error;
