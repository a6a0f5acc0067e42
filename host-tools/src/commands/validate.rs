//! `hvae validate`: the device's outputs against the host's, row by row.

use super::connection::ConnectionArgs;
use super::outln;
use crate::data::{self, Dataset};
use crate::device::{self, Device, DeviceError, DeviceSpec, Timeouts};
use crate::model_io::{self, LoadedModel};
use crate::Error;
use hvae::protocol::{ShapeInfo, CAP_LOAD, CAP_SEGMENT};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Long help of the subcommand (`hvae validate --help`).
pub const LONG_ABOUT: &str =
    "Run a model on a device and compare every output with the host's.\n\n\
    The device is the firmware's `cluster` program under qemu (--device qemu or \
    qemu:mps2-an386 for the Cortex-M4F board, qemu:microbit for the Cortex-M0; the firmware \
    is built with cargo unless --firmware names an ELF) or a board on a serial port \
    (--device serial:PATH). The tool re-synchronises with the device, checks its Info \
    (protocol, architecture, weights CRC) and, if the device runs other weights, loads the \
    model's weights over the protocol (chunked LoadWeights, CRC-checked, all or nothing). \
    Then every data row is sent as a Segment request and the answer is compared with the \
    core's output for the same row on the host.\n\n\
    Reported: mu (mean direction) max abs error, RMSE, relative L2 error and cosine \
    similarity (of all rows together, and the smallest of one row); kappa max abs and \
    relative error; cluster-probability max abs error; label agreement over the rows that \
    are not ties (a tie: the host's two largest probabilities differ by at most the tie \
    tolerance; ties are counted and excluded).\n\n\
    An int8 model (a format-version-2 blob, `hvae export --quantize int8 --format bin`) \
    is validated against the `cluster_int8` program, which serves the int8 model compiled \
    into it (firmware/model/digits_int8.hvae) or the int8 blob last loaded into its flash \
    slots: if it runs other weights, the tool loads the int8 blob (chunked LoadWeights, \
    CRC-checked, all or nothing); its Info must then report the int8 blob's version and \
    CRC, and every row must be the host's int8 computation \
    (hvae::QuantModel) bit for bit, besides the thresholds below; --reference F32MODEL \
    prints the int8 model's fidelity to its f32 model on the data beside it.\n\n\
    Pass thresholds: label agreement 100% (ties excluded); mu max abs error <= 1e-5, mu \
    RMSE <= 1e-5, mu relative L2 <= 1e-5, smallest row cosine >= 1 - 1e-5; kappa relative \
    error <= 1e-4; probability max abs error <= 1e-4 (tie tolerance 1e-4). Exit status 1 \
    when any fails or the device misbehaves (stalls, answers garbage or the wrong response, \
    resets, exits): the error names the fault; rerunning re-syncs and resumes cleanly.";

/// Arguments of `hvae validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// Data file (CSV with a header, plain or .gz, or a 2-D .npy); a `label` column is
    /// ignored.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// The device: qemu, qemu:mps2-an386, qemu:microbit or serial:PATH.
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Print exactly one JSON object with the numbers and "pass".
    #[arg(long)]
    pub json: bool,
    /// Validate only the first N rows.
    #[arg(long, value_name = "N")]
    pub rows: Option<usize>,
    /// Firmware, baud rate and answer timeout.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// With an int8 model: its `f32` model (the one it was quantised from), whose fidelity
    /// to the int8 one on the data is printed beside the validation (label agreement,
    /// worst and mean mu cosine, ACC and NMI of both when the data has labels).
    #[arg(long, value_name = "F32MODEL")]
    pub reference: Option<PathBuf>,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(s)
}

/// Pass/fail limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// Largest |mu_device - mu_host| over every value.
    pub mu_max_abs_err: f64,
    /// Root mean square of the mu differences.
    pub mu_rmse: f64,
    /// ||mu_device - mu_host|| / ||mu_host|| over all rows.
    pub mu_rel_l2: f64,
    /// Smallest cosine between the device's and the host's mu of one row.
    pub mu_min_row_cosine: f64,
    /// Largest |kappa_device - kappa_host| / kappa_host.
    pub kappa_rel_err: f64,
    /// Largest |p_device - p_host| over every probability.
    pub probs_max_abs_err: f64,
    /// Rows whose host top-2 probabilities differ by at most this are ties.
    pub tie_tolerance: f64,
    /// Label agreement required on the rows that are not ties.
    pub label_agreement: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            mu_max_abs_err: 1e-5,
            mu_rmse: 1e-5,
            mu_rel_l2: 1e-5,
            mu_min_row_cosine: 1.0 - 1e-5,
            kappa_rel_err: 1e-4,
            probs_max_abs_err: 1e-4,
            tie_tolerance: 1e-4,
            label_agreement: 1.0,
        }
    }
}

/// Errors of mu.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MuErrors {
    /// Largest absolute difference.
    pub max_abs_err: f64,
    /// Root mean square difference.
    pub rmse: f64,
    /// Relative L2 error of all rows together.
    pub rel_l2: f64,
    /// Cosine similarity of all rows together.
    pub cosine: f64,
    /// Smallest cosine of one row.
    pub min_row_cosine: f64,
}

/// Errors of kappa.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct KappaErrors {
    /// Largest absolute difference.
    pub max_abs_err: f64,
    /// Largest relative difference.
    pub max_rel_err: f64,
}

/// Label agreement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Labels {
    /// Rows compared (ties excluded).
    pub compared: usize,
    /// Rows whose labels agree, among those compared.
    pub agree: usize,
    /// Rows excluded as ties.
    pub ties: usize,
    /// `agree / compared` (1 when nothing was compared).
    pub agreement: f64,
}

/// The report of `hvae validate` (`--json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValidateReport {
    /// All thresholds met.
    pub pass: bool,
    /// The device.
    pub device: String,
    /// Rows validated.
    pub rows: usize,
    /// CRC of the model's weights (hex).
    pub weights_crc: String,
    /// The model's weights were loaded into the device first.
    pub loaded_weights: bool,
    /// Rows whose every output was bit-identical.
    pub bit_exact_rows: usize,
    /// mu errors.
    pub mu: MuErrors,
    /// kappa errors.
    pub kappa: KappaErrors,
    /// Largest cluster-probability difference.
    pub probs_max_abs_err: f64,
    /// Largest difference of the cosine to the nearest centre.
    pub cosine_max_abs_err: f64,
    /// Label agreement.
    pub labels: Labels,
    /// The limits applied.
    pub thresholds: Thresholds,
    /// Which thresholds failed (empty on a pass).
    pub failures: Vec<String>,
    /// Seconds spent streaming the rows.
    pub seconds: f64,
}

/// What the device's answers are compared with: the `f32` model or the int8 one.
pub trait HostModel {
    /// Inputs per sample.
    fn input(&self) -> usize;
    /// Workspace values of one call.
    fn work(&self) -> usize;
    /// The host's answer to one row.
    fn segment_row<'w>(
        &self,
        x: &[f32],
        work: &'w mut [f32],
    ) -> Result<hvae::Segment<'w, f32>, hvae::InferError>;
}

/// The `f32` and the int8 model answer alike: the trait passes each call on to the
/// model's own method of that name.
macro_rules! host_model {
    ($model:ty) => {
        impl HostModel for $model {
            fn input(&self) -> usize {
                self.shape().input
            }
            fn work(&self) -> usize {
                self.work_len()
            }
            fn segment_row<'w>(
                &self,
                x: &[f32],
                work: &'w mut [f32],
            ) -> Result<hvae::Segment<'w, f32>, hvae::InferError> {
                self.segment(x, work)
            }
        }
    };
}
host_model!(hvae::VecModel<f32>);
host_model!(crate::quant::QuantVecModel);

/// Accumulates the comparisons.
#[derive(Default)]
struct Acc {
    rows: usize,
    exact: usize,
    mu_max: f64,
    mu_sq: f64,
    mu_n: usize,
    host_sq: f64,
    dev_sq: f64,
    dot: f64,
    min_row_cos: f64,
    kappa_abs: f64,
    kappa_rel: f64,
    probs_max: f64,
    cos_max: f64,
    compared: usize,
    agree: usize,
    ties: usize,
}

impl Acc {
    fn add(
        &mut self,
        host: &hvae::Segment<'_, f32>,
        dev: &device::DeviceSegment,
        tie_tol: f64,
    ) -> Result<(), String> {
        if dev.mu.len() != host.mu.len() || dev.probs.len() != host.probs.len() {
            return Err(format!(
                "the device answered with {} mu values and {} probabilities, the model has {} \
                 and {}",
                dev.mu.len(),
                dev.probs.len(),
                host.mu.len(),
                host.probs.len()
            ));
        }
        if self.rows == 0 {
            self.min_row_cos = f64::INFINITY;
        }
        self.rows += 1;
        let bits = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        if bits(host.mu, &dev.mu)
            && bits(host.probs, &dev.probs)
            && host.kappa.to_bits() == dev.kappa.to_bits()
            && host.cosine.to_bits() == dev.cosine.to_bits()
            && host.label == dev.label
        {
            self.exact += 1;
        }
        let (mut rd, mut rh, mut rv) = (0f64, 0f64, 0f64);
        for (&h, &d) in host.mu.iter().zip(&dev.mu) {
            let (h, d) = (f64::from(h), f64::from(d));
            // NaN from a device must fail, so compare with max that keeps NaN.
            let e = (d - h).abs();
            self.mu_max = if e.is_nan() {
                f64::NAN
            } else {
                self.mu_max.max(e)
            };
            self.mu_sq += e * e;
            self.mu_n += 1;
            rd += h * d;
            rh += h * h;
            rv += d * d;
        }
        self.host_sq += rh;
        self.dev_sq += rv;
        self.dot += rd;
        let row_cos = rd / (rh.sqrt() * rv.sqrt());
        self.min_row_cos = if row_cos.is_nan() {
            f64::NAN
        } else {
            self.min_row_cos.min(row_cos)
        };
        let (kh, kd) = (f64::from(host.kappa), f64::from(dev.kappa));
        let ke = (kd - kh).abs();
        self.kappa_abs = nan_max(self.kappa_abs, ke);
        self.kappa_rel = nan_max(self.kappa_rel, ke / kh.abs().max(f64::MIN_POSITIVE));
        for (&h, &d) in host.probs.iter().zip(&dev.probs) {
            self.probs_max = nan_max(self.probs_max, (f64::from(d) - f64::from(h)).abs());
        }
        self.cos_max = nan_max(
            self.cos_max,
            (f64::from(dev.cosine) - f64::from(host.cosine)).abs(),
        );
        // A tie: the host's two largest probabilities are within the tolerance, so the
        // smallest rounding difference may pick either label.
        let mut top = [f64::NEG_INFINITY; 2];
        for &p in host.probs {
            let p = f64::from(p);
            if p > top[0] {
                top = [p, top[0]];
            } else if p > top[1] {
                top[1] = p;
            }
        }
        if top[0] - top[1] <= tie_tol {
            self.ties += 1;
        } else {
            self.compared += 1;
            if dev.label == host.label {
                self.agree += 1;
            }
        }
        Ok(())
    }
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn fmt_err(e: DeviceError, device: &str) -> Error {
    Error::Failed(format!("{device}: {e}"))
}

/// Makes the device run `model`'s weights: syncs, checks the protocol, capabilities and
/// architecture, and loads the weights if the device's CRC differs. Returns whether it
/// loaded them, and the device's info (from before a load; its limits do not change).
pub fn prepare(
    dev: &mut Device,
    model: &LoadedModel,
    model_path: &std::path::Path,
    need: u32,
) -> Result<(bool, hvae::protocol::DeviceInfo), Error> {
    let name = dev.name().to_string();
    let info = dev.sync().map_err(|e| fmt_err(e, &name))?;
    if info.capabilities & need != need {
        return Err(Error::Failed(format!(
            "{name}: the device program does not serve the requests needed (capabilities \
             {:#x}, needed {need:#x})",
            info.capabilities
        )));
    }
    let mine = ShapeInfo::from(model.model.shape());
    if info.shape != mine {
        let show = |s: &ShapeInfo| {
            format!(
                "{} -> {:?} -> S^{}, K = {}",
                s.input,
                &s.hidden[..usize::from(s.depth).min(s.hidden.len())],
                s.latent.saturating_sub(1),
                s.clusters
            )
        };
        return Err(Error::BadInput(format!(
            "model {} is {} but {name} runs a model of another architecture ({}); rebuild the \
             firmware for this model",
            model_path.display(),
            show(&mine),
            show(&info.shape)
        )));
    }
    if info.weights_crc == model.crc && info.blob == hvae::store::blob::VERSION {
        return Ok((false, info));
    }
    if info.blob != hvae::store::blob::VERSION {
        return Err(Error::Failed(format!(
            "{name} runs weights of blob format {} (the f32 model's is {}) and cannot load \
             an f32 model",
            info.blob,
            hvae::store::blob::VERSION
        )));
    }
    if info.capabilities & CAP_LOAD == 0 {
        return Err(Error::Failed(format!(
            "{name} runs other weights (CRC {:#010x}, the model's is {:#010x}) and cannot load \
             new ones",
            info.weights_crc, model.crc
        )));
    }
    let blob = model_io::to_bytes(&model.model)
        .map_err(|e| Error::Failed(format!("cannot encode the model: {e}")))?;
    let crc = dev.load_weights(&blob).map_err(|e| fmt_err(e, &name))?;
    let now = dev.info().map_err(|e| fmt_err(e, &name))?.weights_crc;
    if crc != model.crc || now != model.crc {
        return Err(Error::Failed(format!(
            "{name}: after loading, the device reports weights CRC {now:#010x}, the model's is \
             {:#010x}",
            model.crc
        )));
    }
    Ok((true, info))
}

/// Validates `model` on an open device with the rows of `data` (the first `rows`).
pub fn validate_on(
    dev: &mut Device,
    model: &LoadedModel,
    model_path: &std::path::Path,
    data: &Dataset,
    rows: Option<usize>,
    th: Thresholds,
) -> Result<ValidateReport, Error> {
    let (loaded, info) = prepare(dev, model, model_path, CAP_SEGMENT)?;
    compare(
        dev,
        &model.model,
        (info, model.crc, loaded),
        data,
        rows,
        th,
        false,
    )
}

/// Validates the int8 `model` on an open device (the `cluster_int8` program) with the
/// rows of `data` (the first `rows`): if the device runs other weights, the int8 blob at
/// `model_path` is loaded into it first (when it takes `LoadWeights`); the device must
/// then report the int8 blob's version and `model`'s CRC, and every row must be the
/// host's [`hvae::QuantModel`] answer bit for bit (integer arithmetic), besides the
/// thresholds of the `f32` validation.
pub fn validate_on_int8(
    dev: &mut Device,
    model: &model_io::LoadedInt8,
    model_path: &std::path::Path,
    data: &Dataset,
    rows: Option<usize>,
    th: Thresholds,
) -> Result<ValidateReport, Error> {
    let name = dev.name().to_string();
    let info = dev.sync().map_err(|e| fmt_err(e, &name))?;
    let shape = *model.model.shape();
    if info.capabilities & CAP_SEGMENT == 0 || info.shape != ShapeInfo::from(&shape) {
        return Err(Error::BadInput(format!(
            "{name} does not serve Segment for the architecture of {} (capabilities {:#x})",
            model_path.display(),
            info.capabilities
        )));
    }
    let runs_it = info.blob == hvae::store::blob::VERSION_INT8 && info.weights_crc == model.crc;
    if !runs_it && info.capabilities & CAP_LOAD == 0 {
        return Err(Error::Failed(format!(
            "{name} runs other weights (blob format {}, CRC {:#010x}; the int8 model's: {}, \
             {:#010x}) and cannot load new ones",
            info.blob,
            info.weights_crc,
            hvae::store::blob::VERSION_INT8,
            model.crc
        )));
    }
    if !runs_it {
        let blob = std::fs::read(model_path)
            .map_err(|e| Error::Failed(format!("{}: {e}", model_path.display())))?;
        let crc = dev.load_weights(&blob).map_err(|e| fmt_err(e, &name))?;
        let now = dev.info().map_err(|e| fmt_err(e, &name))?;
        if crc != model.crc
            || now.weights_crc != model.crc
            || now.blob != hvae::store::blob::VERSION_INT8
        {
            return Err(Error::Failed(format!(
                "{name}: after loading, the device reports blob format {} and CRC {:#010x}, \
                 the int8 model's are {} and {:#010x}",
                now.blob,
                now.weights_crc,
                hvae::store::blob::VERSION_INT8,
                model.crc
            )));
        }
    }
    compare(
        dev,
        &model.model,
        (info, model.crc, !runs_it),
        data,
        rows,
        th,
        true,
    )
}

/// Streams the rows to the device and compares its answers with `m`'s; with `exact`,
/// every row must also be bit for bit the host's.
fn compare<M: HostModel>(
    dev: &mut Device,
    m: &M,
    (info, crc, loaded): (hvae::protocol::DeviceInfo, u32, bool),
    data: &Dataset,
    rows: Option<usize>,
    th: Thresholds,
    exact: bool,
) -> Result<ValidateReport, Error> {
    let name = dev.name().to_string();
    let mut work = vec![0.0f32; m.work()];
    let mut acc = Acc::default();
    let n = rows.unwrap_or(data.len()).min(data.len());
    // As many rows per request as the device's receive buffer takes (the device answers
    // each): fewer round trips, and a device with room runs them two at a time.
    let d = m.input();
    let per = hvae::protocol::max_samples(info.max_frame as usize, d).max(1);
    let rows: Vec<&[f32]> = data.rows().take(n).collect();
    let start = Instant::now();
    for (c, chunk) in rows.chunks(per).enumerate() {
        let first = c * per + 1;
        let answers = dev.segment_batch(&chunk.concat(), d).map_err(|e| {
            Error::Failed(format!(
                "{name}: data rows {first}..{} of {n}: {e}",
                first + chunk.len() - 1
            ))
        })?;
        for (k, (row, got)) in chunk.iter().zip(answers).enumerate() {
            let i = first + k;
            let host = m.segment_row(row, &mut work);
            let (host, got) = match (host, got) {
                (Ok(h), Ok(g)) => (h, g),
                (Err(e), Err(code)) if hvae::protocol::ErrorCode::from(e) == code => {
                    // Both refuse the row for the same reason: they agree.
                    continue;
                }
                (_, Err(code)) => {
                    return Err(Error::Failed(format!(
                        "{name}: data row {i} of {n}: the device refused it: {code}"
                    )))
                }
                (Err(e), Ok(_)) => {
                    return Err(Error::Failed(format!(
                        "data row {i}: the host's model fails ({e}) but the device answered"
                    )))
                }
            };
            acc.add(&host, &got, th.tie_tolerance)
                .map_err(|e| Error::Failed(format!("{name}: data row {i}: {e}")))?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mu_rmse = (acc.mu_sq / acc.mu_n.max(1) as f64).sqrt();
    let mu = MuErrors {
        max_abs_err: acc.mu_max,
        rmse: mu_rmse,
        rel_l2: acc.mu_sq.sqrt() / acc.host_sq.sqrt().max(f64::MIN_POSITIVE),
        cosine: if acc.rows == 0 {
            1.0
        } else {
            acc.dot / (acc.host_sq.sqrt() * acc.dev_sq.sqrt())
        },
        min_row_cosine: if acc.rows == 0 { 1.0 } else { acc.min_row_cos },
    };
    let labels = Labels {
        compared: acc.compared,
        agree: acc.agree,
        ties: acc.ties,
        agreement: if acc.compared == 0 {
            1.0
        } else {
            acc.agree as f64 / acc.compared as f64
        },
    };
    let mut failures = Vec::new();
    // `!(x <= t)` so that a NaN fails.
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    // An error that must stay within its bar.
    let within =
        |what: &str, err: f64, bar: f64| (err <= bar, format!("{what} {err:.3e} > {bar:.0e}"));
    for (ok, what) in [
        within("mu max abs error", mu.max_abs_err, th.mu_max_abs_err),
        within("mu RMSE", mu.rmse, th.mu_rmse),
        within("mu relative L2", mu.rel_l2, th.mu_rel_l2),
        (
            mu.min_row_cosine >= th.mu_min_row_cosine,
            format!(
                "mu smallest row cosine {:.8} < {:.8}",
                mu.min_row_cosine, th.mu_min_row_cosine
            ),
        ),
        within("kappa relative error", acc.kappa_rel, th.kappa_rel_err),
        within(
            "probability max abs error",
            acc.probs_max,
            th.probs_max_abs_err,
        ),
        (
            labels.agreement >= th.label_agreement,
            format!(
                "label agreement {}/{} ({} ties excluded)",
                labels.agree, labels.compared, labels.ties
            ),
        ),
    ] {
        check(ok, what);
    }
    if exact {
        check(
            acc.exact == acc.rows,
            format!(
                "bit-exact rows {}/{} (int8: integer arithmetic, every row bit for bit)",
                acc.exact, acc.rows
            ),
        );
    }
    Ok(ValidateReport {
        pass: failures.is_empty(),
        device: name,
        rows: acc.rows,
        weights_crc: format!("{:#010x}", crc),
        loaded_weights: loaded,
        bit_exact_rows: acc.exact,
        mu,
        kappa: KappaErrors {
            max_abs_err: acc.kappa_abs,
            max_rel_err: acc.kappa_rel,
        },
        probs_max_abs_err: acc.probs_max,
        cosine_max_abs_err: acc.cos_max,
        labels,
        thresholds: th,
        failures,
        seconds,
    })
}

/// Prints a report, as text or one JSON object.
pub fn print_report(r: &ValidateReport, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    if json {
        let text = serde_json::to_string(r)
            .map_err(|e| Error::Failed(format!("cannot encode the report: {e}")))?;
        return outln!(out, "{text}");
    }
    let th = &r.thresholds;
    outln!(
        out,
        "device {}: weights CRC {}{}",
        r.device,
        r.weights_crc,
        if r.loaded_weights {
            " (loaded over the protocol)"
        } else {
            " (already running)"
        }
    )?;
    outln!(
        out,
        "rows   {} in {:.2} s, {} bit-exact",
        r.rows,
        r.seconds,
        r.bit_exact_rows
    )?;
    outln!(out, "{:<34} {:>12} {:>12}", "", "measured", "limit")?;
    let row = |name: &str, v: f64, lim: String| format!("{name:<34} {v:>12.3e} {lim:>12}");
    outln!(
        out,
        "{}",
        row(
            "mu max abs error",
            r.mu.max_abs_err,
            format!("<= {:.0e}", th.mu_max_abs_err)
        )
    )?;
    outln!(
        out,
        "{}",
        row("mu RMSE", r.mu.rmse, format!("<= {:.0e}", th.mu_rmse))
    )?;
    outln!(
        out,
        "{}",
        row(
            "mu relative L2",
            r.mu.rel_l2,
            format!("<= {:.0e}", th.mu_rel_l2)
        )
    )?;
    outln!(
        out,
        "{:<34} {:>12.9} {:>12}",
        "mu cosine similarity (all rows)",
        r.mu.cosine,
        ""
    )?;
    outln!(
        out,
        "{:<34} {:>12.9} {:>12}",
        "mu cosine similarity (worst row)",
        r.mu.min_row_cosine,
        format!(">= {:.5}", th.mu_min_row_cosine)
    )?;
    outln!(
        out,
        "{}",
        row("kappa max abs error", r.kappa.max_abs_err, String::new())
    )?;
    outln!(
        out,
        "{}",
        row(
            "kappa max relative error",
            r.kappa.max_rel_err,
            format!("<= {:.0e}", th.kappa_rel_err)
        )
    )?;
    outln!(
        out,
        "{}",
        row(
            "probability max abs error",
            r.probs_max_abs_err,
            format!("<= {:.0e}", th.probs_max_abs_err)
        )
    )?;
    outln!(
        out,
        "{}",
        row(
            "nearest-centre cosine max abs error",
            r.cosine_max_abs_err,
            String::new()
        )
    )?;
    outln!(
        out,
        "label agreement {}/{} = {:.4} ({} ties excluded: host top-2 within {:.0e})",
        r.labels.agree,
        r.labels.compared,
        r.labels.agreement,
        r.labels.ties,
        th.tie_tolerance
    )?;
    if r.pass {
        outln!(out, "PASS")
    } else {
        outln!(out, "FAIL: {}", r.failures.join("; "))
    }
}

/// Whether the file at `path` is an int8 blob (format version 2): its version field says
/// so (a file that cannot be read is left to the `f32` loader's error).
fn is_int8(path: &std::path::Path) -> bool {
    std::fs::read(path).is_ok_and(|b| {
        b.get(4..6).map(|v| u16::from_le_bytes([v[0], v[1]]))
            == Some(hvae::store::blob::VERSION_INT8)
    })
}

/// Runs `hvae validate`.
pub fn run(args: &ValidateArgs, out: &mut dyn Write) -> Result<(), Error> {
    let int8 = is_int8(&args.model);
    let (model, int8) = if int8 {
        (None, Some(model_io::load_int8(&args.model)?))
    } else {
        (Some(model_io::load(&args.model)?), None)
    };
    let data = data::load(&args.data)?;
    if let Some(model) = &model {
        super::eval::check_sizes(&model.model, &args.model, &data, &args.data)?;
    }
    let bin = if int8.is_some() {
        "cluster_int8"
    } else {
        "cluster"
    };
    let mut opened = args
        .connection
        .open(&args.device, bin, Timeouts::default())?;
    let th = Thresholds::default();
    let dev = &mut opened.device;
    let report = match (&model, &int8) {
        (Some(m), _) => validate_on(dev, m, &args.model, &data, args.rows, th)?,
        (None, Some(q)) => validate_on_int8(dev, q, &args.model, &data, args.rows, th)?,
        (None, None) => return Err(Error::Failed("no model".to_string())),
    };
    print_report(&report, args.json, out)?;
    if let (Some(q), Some(path)) = (&int8, &args.reference) {
        let f32_model = model_io::load(path)?;
        let fid =
            crate::quant::fidelity(&f32_model.model, &q.model, data.features(), data.labels());
        if !args.json {
            outln!(
                out,
                "int8 fidelity to {} on {} ({} rows): {}",
                path.display(),
                args.data.display(),
                fid.rows,
                fid.line()
            )?;
        }
    }
    if report.pass {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "validation failed: {}",
            report.failures.join("; ")
        )))
    }
}
