//! The input normalisation fitted to data: one rule for the host's trainer and the
//! device's, so a model learns from the same view of the data wherever it is trained.
//!
//! Each feature gets `offset = mean` and `scale = 1 / spread`, with
//! `spread = max(sd, max |x - mean| / SPARSE_RATIO)`:
//!
//! - a feature is measured in its own units only (no floor shared across features), so
//!   data mixing units (millimetres beside kilograms) are not ruled by their largest
//!   column;
//! - a feature that is nearly always one value (an image's edge pixel, a rarely firing
//!   switch) has a tiny deviation but a large largest excursion; dividing by the
//!   deviation alone would make its rare values outliers of tens of deviations, so the
//!   spread is at least [`SPARSE_RATIO`]-th of that excursion;
//! - a constant feature (spread at most [`MIN_SPREAD`]) gets scale 1.
//!
//! Cost: three passes over the rows, about `5 n D` operations; no allocation.

use crate::Real;

/// The largest excursion of a feature, in spreads, after normalisation.
pub const SPARSE_RATIO: f64 = 10.0;

/// A feature whose spread is at most this is treated as constant (scale 1).
pub const MIN_SPREAD: f64 = 1e-6;

/// Why a normalisation could not be fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NormaliseError {
    /// No rows.
    NoRows,
    /// A row, `offset` or `scale` is not `D` long (`D` = `offset.len()`).
    Length,
    /// A value is not finite.
    NonFinite,
}

impl core::fmt::Display for NormaliseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NormaliseError::NoRows => "no rows to fit a normalisation on",
            NormaliseError::Length => "a row, offset or scale of the wrong length",
            NormaliseError::NonFinite => "a non-finite value",
        })
    }
}

impl core::error::Error for NormaliseError {}

/// Fits `offset` and `scale` (`D` values each) to `rows` (each `D` long), by the rule of
/// the [module](self). On error `offset` and `scale` hold unspecified values.
pub fn fit<'a, T, I>(rows: I, offset: &mut [T], scale: &mut [T]) -> Result<(), NormaliseError>
where
    T: Real,
    I: IntoIterator<Item = &'a [T]> + Clone,
{
    let d = offset.len();
    if scale.len() != d {
        return Err(NormaliseError::Length);
    }
    let mut n = 0usize;
    offset.fill(T::zero());
    for row in rows.clone() {
        if row.len() != d {
            return Err(NormaliseError::Length);
        }
        for (m, &v) in offset.iter_mut().zip(row) {
            *m += v;
        }
        n += 1;
    }
    if n == 0 {
        return Err(NormaliseError::NoRows);
    }
    let nf = T::of(n as f64);
    for m in offset.iter_mut() {
        *m /= nf;
    }
    // `scale` holds the variance, then the deviation, then the spread: the largest
    // excursion over the ratio raises it where it is larger.
    scale.fill(T::zero());
    for row in rows.clone() {
        for ((s, &m), &v) in scale.iter_mut().zip(offset.iter()).zip(row) {
            *s += (v - m) * (v - m);
        }
    }
    for s in scale.iter_mut() {
        *s = (*s / nf).sqrt();
    }
    let ratio = T::of(SPARSE_RATIO);
    for row in rows {
        for ((s, &m), &v) in scale.iter_mut().zip(offset.iter()).zip(row) {
            *s = s.max((v - m).abs() / ratio);
        }
    }
    let min = T::of(MIN_SPREAD);
    for (s, m) in scale.iter_mut().zip(offset.iter()) {
        if !s.is_finite() || !m.is_finite() {
            return Err(NormaliseError::NonFinite);
        }
        *s = if *s > min { T::one() / *s } else { T::one() };
    }
    Ok(())
}
