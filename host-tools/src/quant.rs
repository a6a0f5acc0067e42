//! The int8 form of a model on the host: calibration over a data set and quantisation
//! (both the core's, [`hvae::infer::quant`]), its blob, and its fidelity to the `f32`
//! model it came from.
//!
//! Fidelity is measured on rows of data, the two models side by side: label agreement,
//! the cosine between the two `mu` (worst and mean), and ACC and NMI of each model
//! against the labels when there are some. The bars (docs/benchmarks.md) are
//! [`Fidelity::failures`]'.

use crate::metrics;
use hvae::infer::quant::{self, Calibration, QuantModel};
use hvae::store::blob::{self, BlobError};
use hvae::{Model, QuantError};
use serde::{Deserialize, Serialize};

/// An int8 model that owns its vectors.
pub type QuantVecModel = QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>;

/// Least label agreement with the `f32` model.
pub const MIN_AGREEMENT: f64 = 0.99;
/// Least cosine between the `f32` and the int8 `mu` of any row.
pub const MIN_WORST_COSINE: f64 = 0.99;
/// Least mean cosine.
pub const MIN_MEAN_COSINE: f64 = 0.999;
/// Largest drop of ACC or NMI from the `f32` model to the int8 one.
pub const MAX_SCORE_DROP: f64 = 0.01;

/// How far above [`MAX_SCORE_DROP`] a computed drop may sit and still meet it: the
/// scores are ratios rounded to `f64`, so a drop of exactly the bar (2 rows in 200,
/// `90 / 200 - 88 / 200`) computes as `0.010000000000000009`.
const SCORE_ROUNDING: f64 = 1e-12;

/// Why a model could not be quantised.
#[derive(Debug, thiserror::Error)]
pub enum QuantiseError {
    /// The rows do not have the model's input size.
    #[error("the calibration data have {got} features, the model takes {want}")]
    Features {
        /// Features of the data.
        got: usize,
        /// The model's input size.
        want: usize,
    },
    /// No row went through the `f32` encoder.
    #[error("no calibration row could be encoded")]
    NoRows,
    /// The core refused.
    #[error("cannot quantise the model: {0}")]
    Quant(#[from] QuantError),
}

/// Range floors [`quantise`] tries ([`Calibration::floor_ranges`]): from one scale per
/// feature and unit (0) to one per activation (1).
pub const FLOORS: [f32; 6] = [0.0, 0.0625, 0.125, 0.25, 0.5, 1.0];

/// The int8 form of `model`, calibrated on `rows` (`n x D`, row after row; rows the
/// `f32` encoder rejects are left out) with the max rule, and of the range floors
/// [`FLOORS`] the one whose int8 model agrees best with the `f32` model on the same rows:
/// the most equal labels, then the largest mean `mu` cosine (the least mean squared
/// error of `mu`; docs/design.md).
pub fn quantise<S: AsRef<[f32]>>(
    model: &Model<f32, S>,
    rows: &[f32],
    dim: usize,
) -> Result<QuantVecModel, QuantiseError> {
    let s = *model.shape();
    if dim != s.input {
        return Err(QuantiseError::Features {
            got: dim,
            want: s.input,
        });
    }
    let mut cal = Calibration::new(&s, vec![0f32; quant::calibration_len(&s)])?;
    let mut work = vec![0f32; s.work_len()];
    for x in rows.chunks_exact(dim) {
        // A row the f32 model cannot encode tells nothing about its ranges.
        let _ = cal.observe(model, x, &mut work);
    }
    if cal.samples() == 0 {
        return Err(QuantiseError::NoRows);
    }
    let mut best: Option<((f64, f64), QuantVecModel)> = None;
    for floor in FLOORS {
        let mut c = cal.clone();
        c.floor_ranges(floor);
        let mut w = vec![0i8; quant::weight_len(&s)];
        let mut i = vec![0i32; quant::int_len(&s)];
        let mut f = vec![0f32; quant::float_len(&s)];
        quant::quantize(model, &c, &mut w, &mut i, &mut f)?;
        let q = QuantModel::new(s, w, i, f)?;
        let f = fidelity::<_, u8>(model, &q, rows, None);
        let score = (f.agreement, f.mean_cosine);
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, q));
        }
    }
    best.map(|(_, q)| q).ok_or(QuantiseError::NoRows)
}

/// The int8 blob of `q` (format version 2).
pub fn to_bytes(q: &QuantVecModel) -> Result<Vec<u8>, BlobError> {
    let mut out = vec![0u8; blob::int8_blob_len(q.shape())];
    let n = blob::write_int8(q, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// An int8 model from its blob, and the blob's CRC.
pub fn from_bytes(bytes: &[u8]) -> Result<(QuantVecModel, u32), BlobError> {
    let s = blob::read_int8_shape(bytes)?;
    let mut w = vec![0i8; quant::weight_len(&s)];
    let mut i = vec![0i32; quant::int_len(&s)];
    let mut f = vec![0f32; quant::float_len(&s)];
    let crc = blob::read_int8(bytes, &s, &mut w, &mut i, &mut f)?;
    let q = QuantModel::new(s, w, i, f).map_err(BlobError::Int8)?;
    Ok((q, crc))
}

/// The int8 model beside the `f32` one on a set of rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Rows compared.
    pub rows: usize,
    /// Rows that either model failed on (counted as disagreements, left out of the
    /// cosines).
    pub failed: usize,
    /// Share of rows with the same label.
    pub agreement: f64,
    /// Smallest cosine between the two `mu`.
    pub worst_cosine: f64,
    /// Mean cosine.
    pub mean_cosine: f64,
    /// ACC of the `f32` and the int8 labels against the data's labels.
    pub acc: Option<(f64, f64)>,
    /// NMI of both.
    pub nmi: Option<(f64, f64)>,
}

impl Fidelity {
    /// The bars this fidelity misses, one line each (none: it meets them all).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.agreement < MIN_AGREEMENT {
            out.push(format!(
                "label agreement {:.4} < {MIN_AGREEMENT}",
                self.agreement
            ));
        }
        if self.worst_cosine < MIN_WORST_COSINE {
            out.push(format!(
                "worst mu cosine {:.5} < {MIN_WORST_COSINE}",
                self.worst_cosine
            ));
        }
        if self.mean_cosine < MIN_MEAN_COSINE {
            out.push(format!(
                "mean mu cosine {:.6} < {MIN_MEAN_COSINE}",
                self.mean_cosine
            ));
        }
        for (what, v) in [("ACC", self.acc), ("NMI", self.nmi)] {
            if let Some((a, b)) = v {
                if a - b > MAX_SCORE_DROP + SCORE_ROUNDING {
                    out.push(format!(
                        "{what} {a:.4} -> {b:.4} drops more than {MAX_SCORE_DROP}"
                    ));
                }
            }
        }
        out
    }

    /// One line: agreement, cosines, ACC and NMI of both models.
    pub fn line(&self) -> String {
        let mut s = format!(
            "agreement {:.4}, mu cosine worst {:.5} mean {:.6}",
            self.agreement, self.worst_cosine, self.mean_cosine
        );
        if let (Some((a32, a8)), Some((n32, n8))) = (self.acc, self.nmi) {
            s.push_str(&format!(
                ", ACC {a32:.4} -> {a8:.4}, NMI {n32:.4} -> {n8:.4}"
            ));
        }
        if self.failed > 0 {
            s.push_str(&format!(", {} rows failed", self.failed));
        }
        s
    }
}

/// The fidelity of `q` to `model` on `rows` (`n x D`), and, with `truth` (one label per
/// row), ACC and NMI of both models' labels.
pub fn fidelity<S: AsRef<[f32]>, T: Ord + Copy>(
    model: &Model<f32, S>,
    q: &QuantVecModel,
    rows: &[f32],
    truth: Option<&[T]>,
) -> Fidelity {
    let s = *model.shape();
    let (mut w32, mut w8) = (vec![0f32; s.work_len()], vec![0f32; q.work_len()]);
    let (mut l32, mut l8) = (Vec::new(), Vec::new());
    let (mut agree, mut failed, mut n) = (0usize, 0usize, 0usize);
    let (mut worst, mut sum, mut compared) = (1f64, 0f64, 0usize);
    for x in rows.chunks_exact(s.input) {
        n += 1;
        match (model.segment(x, &mut w32), q.segment(x, &mut w8)) {
            (Ok(a), Ok(b)) => {
                let c: f64 =
                    a.mu.iter()
                        .zip(b.mu)
                        .map(|(u, v)| f64::from(*u) * f64::from(*v))
                        .sum();
                worst = worst.min(c);
                sum += c;
                compared += 1;
                agree += usize::from(a.label == b.label);
                l32.push(a.label);
                l8.push(b.label);
            }
            _ => {
                failed += 1;
                // usize::MAX: a label no cluster has, so a failed row scores as wrong.
                l32.push(usize::MAX);
                l8.push(usize::MAX - 1);
            }
        }
    }
    let scores = truth.filter(|t| t.len() == n).map(|t| {
        let (a, b) = (metrics::scores(t, &l32), metrics::scores(t, &l8));
        ((a.acc, b.acc), (a.nmi, b.nmi))
    });
    Fidelity {
        rows: n,
        failed,
        agreement: agree as f64 / n.max(1) as f64,
        worst_cosine: if compared > 0 { worst } else { 0.0 },
        mean_cosine: sum / compared.max(1) as f64,
        acc: scores.map(|s| s.0),
        nmi: scores.map(|s| s.1),
    }
}

/// Bytes of the int8 form of a shape: weights, ints, floats and the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Int8Sizes {
    /// int8 weights (one byte each).
    pub weight_bytes: usize,
    /// `i32` channels and biases.
    pub int_bytes: usize,
    /// `f32` scales, normalisation, concentration head and segmenter.
    pub float_bytes: usize,
    /// The three together: what a device holds in flash.
    pub total_bytes: usize,
    /// The int8 blob (format version 2).
    pub blob_bytes: usize,
    /// The `f32` parameters inference needs, for comparison.
    pub f32_inference_bytes: usize,
    /// Workspace floats per call of the int8 model.
    pub work_len: usize,
}

impl Int8Sizes {
    /// The sizes of `s`'s int8 form; `None` for an invalid shape.
    pub fn of(s: &hvae::Shape) -> Option<Int8Sizes> {
        if s.validate().is_err() {
            return None;
        }
        let (w, i, f) = (
            quant::weight_len(s),
            4 * quant::int_len(s),
            4 * quant::float_len(s),
        );
        Some(Int8Sizes {
            weight_bytes: w,
            int_bytes: i,
            float_bytes: f,
            total_bytes: w + i + f,
            blob_bytes: blob::int8_blob_len(s),
            f32_inference_bytes: 4 * s.inference_param_len(),
            work_len: quant::work_len(s),
        })
    }
}
