//! `hvae import`: a model from weights trained elsewhere (PyTorch), in a safetensors file.

use super::outln;
use super::train::{ActivationArg, LikelihoodArg, PosteriorArg};
use crate::import::{self, ImportOptions, MAX_FILE};
use crate::{fsio, model_io, Error};
use hvae::shape::{Activation, Likelihood, Posterior};
use std::io::Write;
use std::path::PathBuf;

/// Long help of the subcommand (`hvae import --help`).
pub const LONG_ABOUT: &str = "Convert weights trained elsewhere (e.g. PyTorch) from a \
    safetensors file into a model file (weight blob).\n\n\
    The file must hold exactly these tensors (the names `state_dict()` gives the module in \
    host-tools/reference/torch_export.py), with D inputs, hidden widths h1..hL (L in 1..=4, \
    h0 = D), latent M and K clusters:\n\
    \x20 norm.offset, norm.scale          [D]            optional pair (absent: offset 0, scale 1)\n\
    \x20 encoder.{l}.weight / .bias       [h(l+1), h(l)] / [h(l+1)]   l = 0..L-1\n\
    \x20 mu.weight / mu.bias              [M, hL] / [M]\n\
    \x20 kappa.weight / kappa.bias        [1, hL] / [1]\n\
    \x20 segmenter.centres                [K, M]         raw (normalised in the forward pass)\n\
    \x20 segmenter.log_kappa              [1] or []      ln kappa_s\n\
    \x20 segmenter.log_weights            [K]            mixing log-weights\n\
    \x20 decoder.{l}.weight / .bias       [out, in] / [out]   l = 0..L: M -> hL -> ... -> h1 -> D\n\
    Weights are out x in, as torch.nn.Linear stores them (the model file's row-major \
    layout). The sizes are inferred from encoder.*.weight, mu.weight and segmenter.centres; \
    --input/--hidden/--latent/--clusters, when given, must agree with them. Values may be \
    F32 (copied bit for bit), F64, F16 or BF16 (converted to f32); every value must be \
    finite.\n\n\
    The kinds come from the file's __metadata__ (posterior = vmf|power, likelihood = \
    gaussian|bernoulli, activation = relu|tanh; the blob codes 0/1 are accepted too); the \
    flags override them; when neither says, vmf, gaussian and relu are used.\n\n\
    A missing, extra or misshapen tensor, an unsupported dtype, a non-finite value or a \
    file that is not safetensors is a one-line error with exit status 2, and no output \
    file is written. The model file is written atomically (temporary file, then rename).";

/// Arguments of `hvae import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// safetensors file with the tensors listed above.
    #[arg(long, value_name = "FILE")]
    pub safetensors: PathBuf,
    /// Output model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub out: PathBuf,
    /// Posterior family (overrides the file's metadata).
    #[arg(long, value_enum)]
    pub posterior: Option<PosteriorArg>,
    /// Decoder likelihood (overrides the file's metadata).
    #[arg(long, value_enum)]
    pub likelihood: Option<LikelihoodArg>,
    /// Hidden activation (overrides the file's metadata).
    #[arg(long, value_enum)]
    pub activation: Option<ActivationArg>,
    /// Require this input size D.
    #[arg(long, value_name = "D")]
    pub input: Option<usize>,
    /// Require these hidden widths (comma-separated).
    #[arg(long, value_name = "H[,H2...]", value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Require this latent size M.
    #[arg(long, value_name = "M")]
    pub latent: Option<usize>,
    /// Require this number of clusters K.
    #[arg(long, value_name = "K")]
    pub clusters: Option<usize>,
}

impl ImportArgs {
    fn options(&self) -> ImportOptions {
        ImportOptions {
            posterior: self.posterior.map(|p| match p {
                PosteriorArg::Vmf => Posterior::VonMisesFisher,
                PosteriorArg::Power => Posterior::PowerSpherical,
            }),
            likelihood: self.likelihood.map(|l| match l {
                LikelihoodArg::Gaussian => Likelihood::Gaussian,
                LikelihoodArg::Bernoulli => Likelihood::Bernoulli,
            }),
            activation: self.activation.map(|a| match a {
                ActivationArg::Relu => Activation::Relu,
                ActivationArg::Tanh => Activation::Tanh,
            }),
            input: self.input,
            hidden: self.hidden.clone(),
            latent: self.latent,
            clusters: self.clusters,
        }
    }
}

/// Runs `hvae import`.
pub fn run(args: &ImportArgs, out: &mut dyn Write) -> Result<(), Error> {
    let bytes = fsio::read_limited(&args.safetensors, MAX_FILE, "a model's weights")?;
    let imported = import::from_bytes(&bytes, &args.options())
        .map_err(|e| Error::BadInput(format!("{}: {e}", args.safetensors.display())))?;
    let crc = model_io::save(&args.out, &imported.model).map_err(|e| match e {
        model_io::SaveError::Write(w) => Error::Write(w),
        other => Error::Failed(other.to_string()),
    })?;
    let s = imported.model.shape();
    let hidden: Vec<String> = (0..s.depth()).map(|l| s.hidden(l).to_string()).collect();
    let [ps, ls, as_] = imported.kind_sources;
    outln!(
        out,
        "imported {}: D={} hidden={} M={} K={}, {} ({}), {} ({}), {} ({}){}{}",
        args.safetensors.display(),
        s.input,
        hidden.join(","),
        s.latent,
        s.clusters,
        crate::export::posterior_name(s.posterior),
        ps.as_str(),
        crate::export::likelihood_name(s.likelihood),
        ls.as_str(),
        crate::export::activation_name(s.activation),
        as_.as_str(),
        if imported.default_normalisation {
            ", no norm.* tensors: identity normalisation"
        } else {
            ""
        },
        if imported.converted.is_empty() {
            String::new()
        } else {
            format!(", converted to f32: {}", imported.converted.join(", "))
        }
    )?;
    outln!(
        out,
        "wrote {} ({} parameters, CRC {crc:#010x})",
        args.out.display(),
        imported.model.params().len()
    )
}
