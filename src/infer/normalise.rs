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
//!
//! For a stream whose sensor drifts (gain, offset), [`Tracker`] follows the same rule
//! with exponentially weighted statistics, one row at a time, in fixed memory.

use crate::Real;

/// The largest excursion of a feature, in spreads, after normalisation.
pub const SPARSE_RATIO: f64 = 10.0;

/// A feature whose spread is at most this is treated as constant (scale 1).
pub const MIN_SPREAD: f64 = 1e-6;

/// Why a normalisation could not be fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NormaliseError {
    /// No rows.
    #[error("no rows to fit a normalisation on")]
    NoRows,
    /// A row, `offset` or `scale` is not `D` long (`D` = `offset.len()`).
    #[error("a row, offset or scale of the wrong length")]
    Length,
    /// A value is not finite.
    #[error("a non-finite value")]
    NonFinite,
}

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
    for (s, m) in scale.iter_mut().zip(offset.iter()) {
        if !s.is_finite() || !m.is_finite() {
            return Err(NormaliseError::NonFinite);
        }
        *s = scale_of_spread(*s);
    }
    Ok(())
}

/// The scale for a feature's spread: its inverse, or 1 for a constant feature (spread
/// at most [`MIN_SPREAD`]). The one place of that rule for [`fit`] and [`Tracker`].
fn scale_of_spread<T: Real>(spread: T) -> T {
    if spread > T::of(MIN_SPREAD) {
        T::one() / spread
    } else {
        T::one()
    }
}

/// The normalisation of a stream, tracked one row at a time: the rule of the
/// [module](self) on exponentially weighted statistics, for a deployed model whose
/// sensor drifts (a gain or an offset that changes, suddenly or slowly).
///
/// Each row moves the per-feature mean and variance by a weight `a = max(1 / n, 1 -
/// decay)` (`n` rows so far): the first rows are averaged exactly (with `decay = 1`
/// the estimates are the whole stream's, the variance by Welford's update), later
/// ones forget the past with a time constant of `1 / (1 - decay)` rows. The largest
/// excursion `|x - mean|` fades by `decay` per row. Memory: `3 D` scalars (`12 D`
/// bytes); cost of [`push`](Self::push): about `10 D` operations.
///
/// ```
/// use hvae::infer::normalise::Tracker;
///
/// let mut t = Tracker::<2>::new(0.99);
/// for i in 0..1000 {
///     let v = (i % 10) as f32;
///     t.push(&[v, 3.0 * v + 5.0]).unwrap();
/// }
/// let (mut offset, mut scale) = ([0.0; 2], [0.0; 2]);
/// t.normalisation(&mut offset, &mut scale).unwrap();
/// // The second feature is the first one, scaled by 3 and moved by 5.
/// assert!((offset[1] - (3.0 * offset[0] + 5.0)).abs() < 1e-3);
/// assert!((scale[0] / scale[1] - 3.0).abs() < 1e-3);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Tracker<const D: usize> {
    mean: [f32; D],
    var: [f32; D],
    peak: [f32; D],
    decay: f32,
    rows: u32,
}

/// The running statistics, the forgetting factor and the rows seen.
impl<const D: usize> crate::store::record::Record for Tracker<D> {
    crate::store::record::fields_record!(
        mean: [f32; D],
        var: [f32; D],
        peak: [f32; D],
        decay: f32,
        rows: u32,
    );
}

impl<const D: usize> Tracker<D> {
    /// A tracker with no rows yet, forgetting with `decay` per row (in `(0, 1]`; `1`
    /// never forgets; values outside are clamped into it).
    pub const fn new(decay: f32) -> Self {
        // `max`/`min` are not `const` on floats; a NaN decay becomes 1.
        let decay = if decay > 0.0 && decay < 1.0 {
            decay
        } else if decay <= 0.0 {
            f32::MIN_POSITIVE
        } else {
            1.0
        };
        Tracker {
            mean: [0.0; D],
            var: [0.0; D],
            peak: [0.0; D],
            decay,
            rows: 0,
        }
    }

    /// A tracker that starts from a normalisation in use (`offset`, `scale`: `D` values
    /// each: the first `2 D` of a model's parameters, [`Model::set_normalisation`](crate::infer::model::Model::set_normalisation)),
    /// as if it had seen a full window of rows (`1 / (1 - decay)`) with that mean and
    /// spread: the first rows of a stream move it by `1 - decay` each, not by `1 / n`, so
    /// a deployed model's normalisation changes only as fast as the stream shows it
    /// should. `Length` or `NonFinite` (a non-finite or non-positive `scale`) on bad
    /// input.
    pub fn from_normalisation(
        offset: &[f32],
        scale: &[f32],
        decay: f32,
    ) -> Result<Self, NormaliseError> {
        if offset.len() != D || scale.len() != D {
            return Err(NormaliseError::Length);
        }
        if !offset.iter().chain(scale).all(|v| v.is_finite()) || scale.iter().any(|&s| s <= 0.0) {
            return Err(NormaliseError::NonFinite);
        }
        let mut t = Self::new(decay);
        for (((m, v), &o), &s) in t.mean.iter_mut().zip(&mut t.var).zip(offset).zip(scale) {
            let spread = 1.0 / s;
            *m = o;
            *v = spread * spread;
        }
        // A window of rows: `1 / rows <= 1 - decay` from the first push on.
        let window = 1.0 / (1.0 - t.decay);
        t.rows = if window < u32::MAX as f32 {
            libm::ceilf(window) as u32
        } else {
            u32::MAX
        };
        Ok(t)
    }

    /// Rows taken so far (saturating).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Takes one row (`D` values). `Length` or `NonFinite` leave the tracker unchanged.
    pub fn push(&mut self, x: &[f32]) -> Result<(), NormaliseError> {
        if x.len() != D {
            return Err(NormaliseError::Length);
        }
        if !x.iter().all(|v| v.is_finite()) {
            return Err(NormaliseError::NonFinite);
        }
        self.rows = self.rows.saturating_add(1);
        let a = (1.0 / self.rows as f32).max(1.0 - self.decay);
        for (((m, v), p), &xi) in self
            .mean
            .iter_mut()
            .zip(&mut self.var)
            .zip(&mut self.peak)
            .zip(x)
        {
            let delta = xi - *m;
            *m += a * delta;
            *v = (1.0 - a) * (*v + a * delta * delta);
            *p = (*p * self.decay).max((xi - *m).abs());
        }
        Ok(())
    }

    /// The normalisation now (`offset` and `scale`, `D` values each), by the rule of the
    /// [module](self). `NoRows` before the first row, `Length` for buffers not `D` long,
    /// `NonFinite` if the statistics overflowed; on error the buffers are unchanged.
    pub fn normalisation(
        &self,
        offset: &mut [f32],
        scale: &mut [f32],
    ) -> Result<(), NormaliseError> {
        if self.rows == 0 {
            return Err(NormaliseError::NoRows);
        }
        if offset.len() != D || scale.len() != D {
            return Err(NormaliseError::Length);
        }
        if !self
            .mean
            .iter()
            .chain(&self.var)
            .chain(&self.peak)
            .all(|v| v.is_finite())
        {
            return Err(NormaliseError::NonFinite);
        }
        let ratio = SPARSE_RATIO as f32;
        for ((((o, s), &m), &v), &p) in offset
            .iter_mut()
            .zip(scale.iter_mut())
            .zip(&self.mean)
            .zip(&self.var)
            .zip(&self.peak)
        {
            let spread = libm::sqrtf(v).max(p / ratio);
            *o = m;
            *s = scale_of_spread(spread);
        }
        Ok(())
    }
}
