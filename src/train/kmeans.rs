//! Spherical k-means with k-means++ seeding, on caller-owned buffers.
//!
//! Used to initialise the segmenter's centres `c_k` from the encoder's mean directions
//! `mu(x)` of a buffer of samples (on the device and on the host), and as a baseline on
//! the host.
//!
//! Points are the rows of a row-major `n x dim` slice. They are treated as *directions*:
//! every row is normalised on the fly (no copy), so rows of unit norm, as the encoder
//! emits, are the common case but not a requirement. A row of zero norm has no direction
//! and is an error ([`KMeansError::ZeroPoint`]), as is a row holding a NaN or an infinity
//! or whose squared norm overflows ([`KMeansError::NonFinitePoint`]).
//!
//! # Algorithm
//!
//! - Seeding (greedy k-means++): the first centre is a uniformly drawn point. For each
//!   next centre, `L = 2 + floor(ln k)` candidate points (at most 7; scikit-learn's
//!   rule) are drawn with probability proportional to
//!   `d(x) = 1 - cos(x, nearest chosen centre)`, and the candidate that leaves the
//!   smallest total `sum_x d(x)` is kept. For unit vectors `1 - cos = |x - c|^2 / 2`,
//!   so this weight *is* the squared (chordal) distance of Euclidean k-means++'s "D^2"
//!   weighting, as in spherical k-means++ (Endo & Miyamoto 2015). The greedy choice is
//!   what makes well-separated clusters come out reliably: with a single draw per
//!   centre, two seeds land in one cluster far more often (figures in
//!   docs/design.md#training-schedule). If every weight is zero (fewer distinct
//!   directions than `k`) the point is drawn uniformly.
//! - Lloyd iterations on the sphere: each point goes to the centre of largest cosine (it
//!   keeps its current centre on a tie, which makes the iteration stop on duplicated
//!   points); each centre becomes the normalised mean of its points' directions (a
//!   cluster whose directions sum to zero keeps its centre: every centre then scores the
//!   same). An empty cluster is re-seeded with the point farthest (smallest cosine) from
//!   its own centre, taken from a cluster of at least two points, which then moves to it.
//! - Stops when an assignment changes no label (`converged`) or after `max_iter`
//!   iterations. No step of an iteration decreases the objective
//!   `sum_i cos(x_i, c_label(i))` (up to rounding).
//!
//! The result is a deterministic function of the inputs and of the random numbers drawn:
//! at most `1 + (k - 1) L` calls of `next_u64`.
//!
//! # Cost
//!
//! No allocation, O(1) stack. With `n` points: validation, one pass of `n dim`
//! multiply-adds. Seeding, for each of the `k - 1` later centres: a pass of `3 n dim`
//! multiply-adds (nearest chosen centre and weights), a scan of at most `2 n dim` (find
//! the drawn candidates) and a pass of `(2 + L) n dim` (score the candidates), so about
//! `(7 + L) (k - 1) n dim` in all. Then each iteration is one pass of `(k + 2) n dim`
//! multiply-adds (assignment, norms, accumulating the means), `k` square roots and
//! `k dim` divisions for the centres, and, per empty cluster, one more pass of
//! `2 n dim`; at most `max_iter + 1` assignment passes.

use crate::dist::rng::uniform_index_u64;
use crate::infer::nn::dot;
use crate::Real;
use rand_core::Rng;

/// Most clusters [`spherical_kmeans`] handles: labels are `u8` (as the model's
/// [`Shape`](crate::Shape) allows at most 255 clusters).
pub const MAX_CLUSTERS: usize = 255;

/// Floats of scratch [`spherical_kmeans`] needs: `k * dim` sums and `k` counts.
pub const fn scratch_len(k: usize, dim: usize) -> usize {
    k.saturating_mul(dim.saturating_add(1))
}

/// Why [`spherical_kmeans`] or [`nearest_centre`] refused its input. Nothing is written
/// when an error is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KMeansError {
    /// `dim` is zero.
    #[error("dimension must be at least 1")]
    BadDimension,
    /// A slice has the wrong length: `points` not a multiple of `dim`, `centres` not
    /// `k * dim`, `labels` not `n`, `scratch` shorter than [`scratch_len`], or (for
    /// [`nearest_centre`]) `x` not `dim`.
    #[error("buffer length does not match the sizes")]
    LengthMismatch,
    /// `k` is zero (or [`nearest_centre`] got no centre).
    #[error("need at least one cluster")]
    NoClusters,
    /// `k` exceeds [`MAX_CLUSTERS`].
    #[error("at most 255 clusters")]
    TooManyClusters,
    /// `k` exceeds the number of points.
    #[error("more clusters than points")]
    MoreClustersThanPoints,
    /// The row holds a NaN or an infinity, or its squared norm overflows.
    #[error("point {row} is not finite")]
    NonFinitePoint {
        /// 0-based row index.
        row: usize,
    },
    /// The row has zero norm (or its squared norm underflows to zero): it has no
    /// direction.
    #[error("point {row} has zero norm")]
    ZeroPoint {
        /// 0-based row index.
        row: usize,
    },
}

/// Outcome of [`spherical_kmeans`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KMeansInfo<T> {
    /// Lloyd iterations run (centre update + assignment), at most `max_iter`.
    pub iterations: usize,
    /// Mean cosine of each point to its assigned centre after the last assignment (the
    /// objective, to maximise; 1 is a perfect fit).
    pub objective: T,
    /// True when the last assignment changed no label (a fixed point). False when
    /// `max_iter` ran out first, and always for `max_iter = 0`.
    pub converged: bool,
    /// Empty clusters re-seeded over all iterations.
    pub reseeds: usize,
}

/// The dot products of `x` with each of `rows`, handed to `f(i, x . rows_i)` in the
/// order of `rows` (a row shorter than `x` is summed over its own length, as with
/// `zip`). They are summed four rows at a time, and the last one to three rows two side
/// by side and a third alone: each sum still runs in feature order from zero (the bits
/// of [`dot`]), the independent sums let the processor overlap their additions, and `x`
/// is loaded once for each group.
#[inline]
fn dots<'a, T: Real + 'a>(
    x: &[T],
    rows: impl IntoIterator<Item = &'a [T]>,
    mut f: impl FnMut(usize, T),
) {
    let mut rows = rows.into_iter().fuse();
    let mut i = 0;
    loop {
        match [rows.next(), rows.next(), rows.next(), rows.next()] {
            [Some(a), Some(b), Some(c), Some(d)] => {
                let mut s = [T::zero(); 4];
                for ((((v, a), b), c), d) in x.iter().zip(a).zip(b).zip(c).zip(d) {
                    s[0] += *v * *a;
                    s[1] += *v * *b;
                    s[2] += *v * *c;
                    s[3] += *v * *d;
                }
                for (w, s) in s.into_iter().enumerate() {
                    f(i + w, s);
                }
                i += 4;
            }
            // One to three rows left: the first two side by side, a third alone.
            [Some(a), b, c, _] => {
                let mut s = [T::zero(); 2];
                for ((v, a), b) in x.iter().zip(a).zip(b.unwrap_or(a)) {
                    s[0] += *v * *a;
                    s[1] += *v * *b;
                }
                f(i, s[0]);
                if b.is_some() {
                    f(i + 1, s[1]);
                }
                if let Some(c) = c {
                    f(i + 2, dot(x, c));
                }
                break;
            }
            _ => break,
        }
    }
}

#[inline]
fn norm<T: Real>(a: &[T]) -> T {
    dot(a, a).sqrt()
}

/// Uniform in `[0, 1)` as `f64` (53 random bits).
fn uniform01<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Writes `x / |x|` into `c`.
fn set_direction<T: Real>(c: &mut [T], x: &[T]) {
    let nx = norm(x);
    for (c, x) in c.iter_mut().zip(x) {
        *c = *x / nx;
    }
}

/// The centre of largest cosine to `x` (the first on a tie) and that cosine. Centres are
/// the rows of `centres` (`k x dim`, row-major) and should have unit norm (the cosine is
/// `x . c / |x|`); `x` need not.
///
/// Errors: `dim == 0`, `x.len() != dim` or `centres.len()` not a multiple of `dim`, no
/// centre, `x` not finite or of zero norm.
///
/// Cost: `(k + 1) dim` multiply-adds, one square root, one division.
pub fn nearest_centre<T: Real>(
    x: &[T],
    centres: &[T],
    dim: usize,
) -> Result<(usize, T), KMeansError> {
    if dim == 0 {
        return Err(KMeansError::BadDimension);
    }
    if x.len() != dim || !centres.len().is_multiple_of(dim) {
        return Err(KMeansError::LengthMismatch);
    }
    if centres.is_empty() {
        return Err(KMeansError::NoClusters);
    }
    check_row(x, 0)?;
    let mut best = -T::MAX;
    let mut arg = 0;
    for (j, c) in centres.chunks_exact(dim).enumerate() {
        let d = dot(x, c);
        if d > best || j == 0 {
            best = d;
            arg = j;
        }
    }
    Ok((arg, best / norm(x)))
}

fn check_row<T: Real>(x: &[T], row: usize) -> Result<(), KMeansError> {
    let ss = dot(x, x);
    if !ss.is_finite() {
        return Err(KMeansError::NonFinitePoint { row });
    }
    if ss == T::zero() {
        return Err(KMeansError::ZeroPoint { row });
    }
    Ok(())
}

/// Spherical k-means++ of the `n = points.len() / dim` rows of `points` into `k` clusters.
///
/// Writes the `k` unit centres (row-major `k x dim`) into `centres` and each point's
/// cluster into `labels` (`n` long, values `< k`). `scratch` (at least
/// [`scratch_len`]`(k, dim)` floats) holds the running sums; its content on entry is
/// ignored, and so are those of `centres` and `labels`. See the module docs for the
/// algorithm, the random numbers it draws and its cost.
///
/// Errors (checked before anything is written): see [`KMeansError`].
#[allow(clippy::too_many_arguments)]
pub fn spherical_kmeans<T: Real, R: Rng + ?Sized>(
    points: &[T],
    dim: usize,
    k: usize,
    max_iter: usize,
    rng: &mut R,
    centres: &mut [T],
    scratch: &mut [T],
    labels: &mut [u8],
) -> Result<KMeansInfo<T>, KMeansError> {
    if dim == 0 {
        return Err(KMeansError::BadDimension);
    }
    if !points.len().is_multiple_of(dim) {
        return Err(KMeansError::LengthMismatch);
    }
    let n = points.len() / dim;
    if k == 0 {
        return Err(KMeansError::NoClusters);
    }
    if k > MAX_CLUSTERS {
        return Err(KMeansError::TooManyClusters);
    }
    if k > n {
        return Err(KMeansError::MoreClustersThanPoints);
    }
    if centres.len() != k * dim || labels.len() != n || scratch.len() < scratch_len(k, dim) {
        return Err(KMeansError::LengthMismatch);
    }
    for (row, x) in points.chunks_exact(dim).enumerate() {
        check_row(x, row)?;
    }
    // The running sums (`k x dim`) and counts (`k`), split once.
    let (sums, rest) = scratch.split_at_mut_checked(k * dim).unwrap_or_default();
    let mut acc = Acc {
        sums,
        counts: rest.get_mut(..k).unwrap_or_default(),
    };

    seed(points, dim, k, rng, centres, labels);
    let (_, mut total) = assign(points, dim, centres, labels, &mut acc);
    let mut iterations = 0;
    let mut converged = false;
    let mut reseeds = 0;
    while iterations < max_iter {
        reseeds += update(points, dim, k, centres, labels, &mut acc);
        iterations += 1;
        let (changed, t) = assign(points, dim, centres, labels, &mut acc);
        total = t;
        if !changed {
            converged = true;
            break;
        }
    }
    Ok(KMeansInfo {
        iterations,
        objective: total / T::of(n as f64),
        converged,
        reseeds,
    })
}

/// Candidates drawn per later centre by greedy k-means++: `2 + floor(ln k)`, as
/// scikit-learn does (at most 7 for `k <= 255`).
const fn local_trials(k: usize) -> usize {
    // ceil(e^m) for m = 1..=5: floor(ln k) counts the thresholds k reaches.
    let thresholds = [3, 8, 21, 55, 149];
    let mut m = 0;
    let mut i = 0;
    while i < thresholds.len() {
        if k >= thresholds[i] {
            m += 1;
        }
        i += 1;
    }
    2 + m
}

/// Most candidates per centre ([`local_trials`] of 255).
const MAX_TRIALS: usize = 7;

/// `1 - x . c / (|x| |c|)` clamped at 0, given `x . c`, `|x|` and `|c|`.
#[inline]
fn dissimilarity<T: Real>(xc: T, nx: T, nc: T) -> T {
    let d = T::one() - xc / (nx * nc);
    if d > T::zero() {
        d
    } else {
        T::zero()
    }
}

/// Greedy k-means++ seeding. Leaves every label at the nearest of the first `k - 1`
/// centres (the assignment that follows takes the last one into account).
fn seed<T: Real, R: Rng + ?Sized>(
    points: &[T],
    dim: usize,
    k: usize,
    rng: &mut R,
    centres: &mut [T],
    labels: &mut [u8],
) {
    let n = labels.len();
    let zero = T::zero();
    let one = T::one();
    let trials = local_trials(k).min(MAX_TRIALS);
    let first = uniform_index_u64(rng, n);
    set_direction(centre_mut(centres, dim, 0), row(points, dim, first));
    labels.fill(0);
    // Weight of a point: 1 - cos to its nearest chosen centre (unit), clamped at 0.
    let weight = |x: &[T], centres: &[T], l: u8| {
        let mut d = [zero; 2];
        let c = row(centres, dim, usize::from(l));
        dots(x, [x, c], |i, v| {
            d.get_mut(i).into_iter().for_each(|e| *e = v)
        });
        dissimilarity(d[1], d[0].sqrt(), one)
    };
    for j in 1..k {
        let newest = j - 1;
        // Pass A: move labels to the newest centre where strictly closer; total weight.
        let mut total = zero;
        for (i, l) in labels.iter_mut().enumerate() {
            let x = row(points, dim, i);
            // `x . x`, then `x . c` for its centre and for the newest (the same centre
            // while only the first is chosen: no move then).
            let mut d = [zero; 3];
            let cur = row(centres, dim, usize::from(*l));
            let new = row(centres, dim, newest);
            dots(x, [x, cur, new], |i, v| {
                d.get_mut(i).into_iter().for_each(|e| *e = v)
            });
            let mut xc = d[1];
            if d[2] > d[1] {
                *l = newest as u8;
                xc = d[2];
            }
            total += dissimilarity(xc, d[0].sqrt(), one);
        }
        if total <= zero {
            // Every point sits on a chosen centre: any point will do.
            let pick = uniform_index_u64(rng, n);
            set_direction(centre_mut(centres, dim, j), row(points, dim, pick));
            continue;
        }
        // Pass B: draw `trials` candidates with probability weight / total, in one scan
        // over the sorted targets.
        let mut targets = [zero; MAX_TRIALS];
        let targets = &mut targets[..trials];
        for t in targets.iter_mut() {
            *t = T::of(uniform01(rng)) * total;
        }
        for a in 1..trials {
            let mut b = a;
            while b > 0 && targets.get(b - 1) > targets.get(b) {
                targets.swap(b - 1, b);
                b -= 1;
            }
        }
        let mut picks = [0usize; MAX_TRIALS];
        let picks = &mut picks[..trials];
        let mut found = 0;
        let mut cum = zero;
        let mut last_positive = 0;
        for (i, l) in labels.iter().enumerate() {
            let w = weight(row(points, dim, i), centres, *l);
            if w > zero {
                last_positive = i;
                cum += w;
                let below = |t: &&T| cum > **t;
                while let (Some(p), Some(_)) =
                    (picks.get_mut(found), targets.get(found).filter(below))
                {
                    *p = i;
                    found += 1;
                }
                if found == trials {
                    break;
                }
            }
        }
        // Rounding can leave a target at or past the final sum.
        for p in picks.iter_mut().skip(found) {
            *p = last_positive;
        }
        // Distinct candidates (sorted targets give non-decreasing indices).
        let mut cands = 1;
        for t in 1..trials {
            let (Some(&pt), Some(&last)) = (picks.get(t), picks.get(cands - 1)) else {
                break;
            };
            if pt != last {
                if let Some(p) = picks.get_mut(cands) {
                    *p = pt;
                }
                cands += 1;
            }
        }
        let picks = picks.get(..cands).unwrap_or_default();
        // Pass C: keep the candidate that leaves the smallest total weight.
        let pick = if let [only] = picks {
            *only
        } else {
            let mut cand_norm = [one; MAX_TRIALS];
            for (c, &p) in cand_norm.iter_mut().zip(picks) {
                *c = norm(row(points, dim, p));
            }
            let mut potential = [zero; MAX_TRIALS];
            for (i, l) in labels.iter().enumerate() {
                let x = row(points, dim, i);
                // `x . x`, `x . c` for its centre, then `x . p` for each candidate.
                let mut xd = [zero; MAX_TRIALS + 2];
                let cands = picks.iter().map(|&p| row(points, dim, p));
                let own = row(centres, dim, usize::from(*l));
                dots(x, [x, own].into_iter().chain(cands), |i, v| {
                    xd.get_mut(i).into_iter().for_each(|e| *e = v)
                });
                let nx = xd[0].sqrt();
                let d = dissimilarity(xd[1], nx, one);
                let xcs = xd.iter().skip(2);
                for ((pot, &xc), &nc) in potential.iter_mut().zip(xcs).zip(&cand_norm) {
                    let dc = dissimilarity(xc, nx, nc);
                    *pot += if dc < d { dc } else { d };
                }
            }
            // The first candidate, then any with a strictly smaller potential.
            let mut best = (picks.first().copied().unwrap_or(0), potential[0]);
            for (&pot, &p) in potential.iter().zip(picks).skip(1) {
                if pot < best.1 {
                    best = (p, pot);
                }
            }
            best.0
        };
        set_direction(centre_mut(centres, dim, j), row(points, dim, pick));
    }
}

/// The running sums of [`spherical_kmeans`]'s scratch: per cluster, the sum of its
/// points' directions (`k x dim`) and its count (`k`).
struct Acc<'a, T> {
    sums: &'a mut [T],
    counts: &'a mut [T],
}

/// Row `i` of `rows` (rows of `dim` values). The row indices here are point indices
/// below `n` and labels below `k`, and the lengths were checked on entry, so it is
/// never past the end (it would be empty).
fn row<T>(rows: &[T], dim: usize, i: usize) -> &[T] {
    rows.get(i * dim..(i + 1) * dim).unwrap_or_default()
}

/// Centre `i` of `centres`, to write (as [`row`]).
fn centre_mut<T>(centres: &mut [T], dim: usize, i: usize) -> &mut [T] {
    centres.get_mut(i * dim..(i + 1) * dim).unwrap_or_default()
}

/// Assignment step: each label moves to the centre of largest cosine unless its current
/// centre ties with it. Fills `acc` with the per-cluster sums of directions and counts.
/// Returns whether a label changed and the sum of the cosines to the assigned centres.
fn assign<T: Real>(
    points: &[T],
    dim: usize,
    centres: &[T],
    labels: &mut [u8],
    acc: &mut Acc<'_, T>,
) -> (bool, T) {
    acc.sums.fill(T::zero());
    acc.counts.fill(T::zero());
    let Acc { sums, counts } = acc;
    let mut changed = false;
    let mut total = T::zero();
    for (x, l) in points.chunks_exact(dim).zip(labels.iter_mut()) {
        let cur = usize::from(*l);
        let mut best = -T::MAX;
        let mut arg = 0;
        let mut d_cur = -T::MAX;
        let mut xx = T::zero();
        // `x . x`, then `x . c` for every centre in order.
        let rows = core::iter::once(x).chain(centres.chunks_exact(dim));
        dots(x, rows, |i, d| match i.checked_sub(1) {
            None => xx = d,
            Some(j) => {
                if d > best || j == 0 {
                    best = d;
                    arg = j;
                }
                if j == cur {
                    d_cur = d;
                }
            }
        });
        let j = if d_cur >= best { cur } else { arg };
        if j != cur {
            changed = true;
            *l = j as u8;
        }
        let nx = xx.sqrt();
        total += best / nx;
        for (s, x) in centre_mut(sums, dim, j).iter_mut().zip(x) {
            *s += *x / nx;
        }
        if let Some(c) = counts.get_mut(j) {
            *c += T::one();
        }
    }
    (changed, total)
}

/// Update step: centres from the sums in `acc`, then re-seeding of empty clusters.
/// Returns the number of clusters re-seeded.
fn update<T: Real>(
    points: &[T],
    dim: usize,
    k: usize,
    centres: &mut [T],
    labels: &mut [u8],
    acc: &mut Acc<'_, T>,
) -> usize {
    let zero = T::zero();
    let one = T::one();
    let Acc { sums, counts } = acc;
    for ((c, s), count) in centres
        .chunks_exact_mut(dim)
        .zip(sums.chunks_exact(dim))
        .zip(counts.iter())
    {
        if *count > zero {
            let ss = dot(s, s);
            if ss > zero && ss.is_finite() {
                let ns = ss.sqrt();
                for (c, s) in c.iter_mut().zip(s) {
                    *c = *s / ns;
                }
            }
        }
    }
    let mut reseeds = 0;
    // Labels are below `k`, the counts' length.
    let count = |counts: &[T], l: usize| counts.get(l).copied().unwrap_or(zero);
    for e in 0..k {
        if count(counts, e) > zero {
            continue;
        }
        // The point farthest from its own centre, among clusters that keep a point.
        let mut worst: Option<usize> = None;
        let mut worst_cos = T::MAX;
        for (i, (x, l)) in points.chunks_exact(dim).zip(labels.iter()).enumerate() {
            let l = usize::from(*l);
            if count(counts, l) > one {
                let cos = dot(x, row(centres, dim, l)) / norm(x);
                if worst.is_none() || cos < worst_cos {
                    worst = Some(i);
                    worst_cos = cos;
                }
            }
        }
        if let Some((i, label)) = worst.and_then(|i| Some((i, labels.get_mut(i)?))) {
            set_direction(centre_mut(centres, dim, e), row(points, dim, i));
            if let Some(c) = counts.get_mut(usize::from(*label)) {
                *c -= one;
            }
            if let Some(c) = counts.get_mut(e) {
                *c = one;
            }
            *label = e as u8;
            reseeds += 1;
        }
    }
    reseeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`dots`] hands out each row's dot product with the bits of [`dot`], in order, for
    /// every number of rows: groups of four, then a pair and a single row.
    #[test]
    fn dots_are_the_bits_of_dot() {
        let v = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 37.0;
        let x: Vec<f32> = (0..13).map(v).collect();
        let rows: Vec<Vec<f32>> = (0..11)
            .map(|r| (0..13).map(|f| v(100 + 13 * r + f)).collect())
            .collect();
        for count in 0..=rows.len() {
            let mut got = Vec::new();
            dots(&x, rows.iter().take(count).map(|r| &r[..]), |i, d| {
                got.push((i, d.to_bits()))
            });
            let want: Vec<(usize, u32)> = rows
                .iter()
                .take(count)
                .enumerate()
                .map(|(i, r)| (i, dot(&x, r).to_bits()))
                .collect();
            assert_eq!(got, want, "{count} rows");
        }
        // The comparison can tell: summed from the last feature back, a row differs.
        let back = |r: &[f32]| x.iter().zip(r).rev().fold(0.0f32, |s, (a, b)| s + a * b);
        assert!(rows
            .iter()
            .any(|r| back(r).to_bits() != dot(&x, r).to_bits()));
    }
}
