//! Clustering scores against known labels: ACC, NMI and ARI.
//!
//! All three compare two labelings of the same samples and do not care what the label
//! values are (any permutation of cluster ids scores the same). They follow
//! scikit-learn's definitions, edge cases included:
//!
//! - **ACC**: the fraction of samples whose cluster maps to their class under the
//!   one-to-one mapping of clusters to classes that maximises it (the Hungarian method,
//!   [`pathfinding::kuhn_munkres`], on the contingency table). With more clusters than
//!   classes the extra clusters map to nothing and their samples count as wrong; with
//!   fewer, the extra classes are never predicted.
//! - **NMI**: mutual information over the arithmetic mean of the two entropies
//!   (`normalized_mutual_info_score`'s default `average_method="arithmetic"`); `1.0`
//!   when both labelings have a single value, `0.0` when only one of them does or the
//!   mutual information is otherwise zero.
//! - **ARI**: the adjusted Rand index, computed from the pair confusion matrix in exact
//!   integer arithmetic (`adjusted_rand_score`); `1.0` when the two labelings agree on
//!   every pair.
//!
//! Empty labelings score `1.0` on all three (nothing disagrees), as in scikit-learn for
//! NMI and ARI.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use serde::Serialize;
use std::collections::BTreeMap;

/// The three scores of one labeling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scores {
    /// Accuracy with Hungarian matching, in `[0, 1]`.
    pub acc: f64,
    /// Normalised mutual information (arithmetic mean), in `[0, 1]`.
    pub nmi: f64,
    /// Adjusted Rand index, in `[-0.5, 1]` (0 for chance).
    pub ari: f64,
}

/// The contingency table of two labelings: `table[i][j]` counts the samples of the
/// `i`-th smallest class value that carry the `j`-th smallest cluster value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contingency {
    /// Counts, `classes x clusters`.
    pub table: Vec<Vec<u64>>,
    /// Number of samples.
    pub n: u64,
}

impl Contingency {
    /// Counts the pairs `(truth[i], pred[i])`.
    ///
    /// # Panics
    /// If the two slices have different lengths.
    pub fn new<A: Ord + Copy, B: Ord + Copy>(truth: &[A], pred: &[B]) -> Contingency {
        assert_eq!(truth.len(), pred.len(), "labelings of different lengths");
        let classes = dense_ids(truth);
        let clusters = dense_ids(pred);
        let mut table = vec![vec![0u64; clusters.len()]; classes.len()];
        for (a, b) in truth.iter().zip(pred) {
            table[classes[a]][clusters[b]] += 1;
        }
        Contingency {
            table,
            n: truth.len() as u64,
        }
    }

    /// Row sums (samples per class).
    pub fn class_sizes(&self) -> Vec<u64> {
        self.table.iter().map(|r| r.iter().sum()).collect()
    }

    /// Column sums (samples per cluster).
    pub fn cluster_sizes(&self) -> Vec<u64> {
        let cols = self.table.first().map_or(0, Vec::len);
        (0..cols)
            .map(|j| self.table.iter().map(|r| r[j]).sum())
            .collect()
    }
}

/// Maps each distinct value to its rank among the distinct values.
fn dense_ids<T: Ord + Copy>(v: &[T]) -> BTreeMap<T, usize> {
    let mut ids: BTreeMap<T, usize> = v.iter().map(|&x| (x, 0)).collect();
    for (i, id) in ids.values_mut().enumerate() {
        *id = i;
    }
    ids
}

/// ACC, NMI and ARI of `pred` against `truth`.
///
/// # Panics
/// If the two slices have different lengths.
pub fn scores<A: Ord + Copy, B: Ord + Copy>(truth: &[A], pred: &[B]) -> Scores {
    let c = Contingency::new(truth, pred);
    Scores {
        acc: accuracy_of(&c),
        nmi: nmi_of(&c),
        ari: ari_of(&c),
    }
}

/// Accuracy with the best one-to-one matching of clusters to classes.
pub fn accuracy<A: Ord + Copy, B: Ord + Copy>(truth: &[A], pred: &[B]) -> f64 {
    accuracy_of(&Contingency::new(truth, pred))
}

/// Normalised mutual information (arithmetic mean of the entropies).
pub fn nmi<A: Ord + Copy, B: Ord + Copy>(truth: &[A], pred: &[B]) -> f64 {
    nmi_of(&Contingency::new(truth, pred))
}

/// Adjusted Rand index.
pub fn ari<A: Ord + Copy, B: Ord + Copy>(truth: &[A], pred: &[B]) -> f64 {
    ari_of(&Contingency::new(truth, pred))
}

/// The best matching's total on a contingency table.
pub fn accuracy_of(c: &Contingency) -> f64 {
    if c.n == 0 {
        return 1.0;
    }
    let rows = c.table.len();
    let cols = c.table.first().map_or(0, Vec::len);
    // kuhn_munkres needs rows <= columns: put the smaller side on the rows. Counts are
    // at most the number of samples, far below i64::MAX.
    let transpose = rows > cols;
    let (r, k) = if transpose {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let mut values = Vec::with_capacity(r * k);
    for i in 0..r {
        for j in 0..k {
            let count = if transpose {
                c.table[j][i]
            } else {
                c.table[i][j]
            };
            values.push(count as i64);
        }
    }
    let weights = match Matrix::from_vec(r, k, values) {
        Ok(m) => m,
        Err(_) => return 0.0, // unreachable: the vector has r * k values
    };
    let (total, _) = kuhn_munkres(&weights);
    total as f64 / c.n as f64
}

/// Entropy (nats) of a distribution given by counts summing to `n`.
fn entropy(counts: &[u64], n: u64) -> f64 {
    let n = n as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// Normalised mutual information from a contingency table.
pub fn nmi_of(c: &Contingency) -> f64 {
    let classes = c.table.len();
    let clusters = c.table.first().map_or(0, Vec::len);
    // Both labelings constant (or empty): a perfect match.
    if classes == clusters && classes <= 1 {
        return 1.0;
    }
    // One side constant: the mutual information is zero.
    if classes == 1 || clusters == 1 {
        return 0.0;
    }
    let a = c.class_sizes();
    let b = c.cluster_sizes();
    let n = c.n as f64;
    let mut mi = 0.0;
    for (i, row) in c.table.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate() {
            if nij > 0 {
                let nij = nij as f64;
                let term = nij / n * (nij * n / (a[i] as f64 * b[j] as f64)).ln();
                // scikit-learn drops terms below machine epsilon (rounding noise).
                if term.abs() >= f64::EPSILON {
                    mi += term;
                }
            }
        }
    }
    let mi = mi.max(0.0);
    if mi == 0.0 {
        return 0.0;
    }
    mi / (0.5 * (entropy(&a, c.n) + entropy(&b, c.n)))
}

/// Adjusted Rand index from a contingency table (pair counts in exact integers).
pub fn ari_of(c: &Contingency) -> f64 {
    let n = i128::from(c.n);
    let a = c.class_sizes();
    let b = c.cluster_sizes();
    let sum_sq: i128 = c
        .table
        .iter()
        .flatten()
        .map(|&x| i128::from(x) * i128::from(x))
        .sum();
    // Pair confusion matrix, as scikit-learn's pair_confusion_matrix (ordered pairs).
    let row_dot: i128 = c
        .table
        .iter()
        .map(|r| {
            r.iter()
                .zip(&b)
                .map(|(&x, &bj)| i128::from(x) * i128::from(bj))
                .sum::<i128>()
        })
        .sum();
    let col_dot: i128 = c
        .table
        .iter()
        .zip(&a)
        .map(|(r, &ai)| {
            r.iter()
                .map(|&x| i128::from(x) * i128::from(ai))
                .sum::<i128>()
        })
        .sum();
    let tp = sum_sq - n;
    let fp = row_dot - sum_sq;
    let fn_ = col_dot - sum_sq;
    let tn = n * n - fp - fn_ - sum_sq;
    if fn_ == 0 && fp == 0 {
        return 1.0;
    }
    let num = 2.0 * ((tp * tn - fn_ * fp) as f64);
    let den = ((tp + fn_) * (fn_ + tn) + (tp + fp) * (fp + tn)) as f64;
    num / den
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contingency_counts() {
        let c = Contingency::new(&[1, 1, 2, 2, 2], &['b', 'a', 'a', 'a', 'c']);
        assert_eq!(c.table, vec![vec![1, 1, 0], vec![2, 0, 1]]);
        assert_eq!(c.class_sizes(), vec![2, 3]);
        assert_eq!(c.cluster_sizes(), vec![3, 1, 1]);
    }

    #[test]
    fn perfect_and_permuted() {
        let t = [0, 0, 1, 1, 2, 2];
        let p = [5, 5, 3, 3, 9, 9];
        let s = scores(&t, &p);
        assert_eq!(s.acc, 1.0);
        assert!((s.nmi - 1.0).abs() < 1e-12);
        assert_eq!(s.ari, 1.0);
    }
}
