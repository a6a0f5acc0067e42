//! A synthetic data set with known labels: a mixture of von Mises-Fisher clusters on the
//! unit sphere `S^{dim-1}`.
//!
//! The cluster centres are independent uniform directions (normalised standard normal
//! vectors). Row `i` belongs to cluster `i mod clusters` (so clusters are equally sized
//! and interleaved) and is an exact vMF draw around its centre with concentration
//! `kappa`, made by the core's own sampler ([`hvae::Posterior::sample`]: Wood's rejection
//! sampler, the exact inverse CDF for `dim = 3`). Everything is drawn in `f64` from one
//! `Xoshiro256PlusPlus` stream seeded with `seed` and stored as `f32`, so a seed always
//! gives the same data.
//!
//! How separated the clusters are depends on `kappa` and `dim`: the mean cosine of a
//! draw to its centre is `A_dim(kappa)` (e.g. about `0.90` for `dim = 8`, `kappa = 40`),
//! while independent random centres have cosines of order `1/sqrt(dim)`.

use crate::data::Dataset;
use hvae::dist::rng::standard_normal;
use hvae::Posterior;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Parameters of a vMF mixture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VmfMixture {
    /// Ambient dimension (rows are unit vectors of this length), at least 2.
    pub dim: usize,
    /// Number of clusters, at least 1.
    pub clusters: usize,
    /// Total number of rows, at least `clusters`.
    pub rows: usize,
    /// Concentration of every cluster, finite and positive.
    pub kappa: f64,
    /// Seed of the random stream.
    pub seed: u64,
}

/// A generated mixture: the data (with labels) and the true centres.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixture {
    /// Rows `x0..x{dim-1}`, with a label per row.
    pub data: Dataset,
    /// Unit centres, `clusters x dim` row-major.
    pub centres: Vec<f64>,
}

/// Why a mixture could not be generated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SynthError {
    /// Bad parameters (the message says which).
    #[error("{0}")]
    Parameters(String),
    /// The core's sampler failed (its rejection cap; practically never).
    #[error("sampling failed: {0}")]
    Sample(hvae::dist::sphere::SampleError),
}

impl VmfMixture {
    /// `rows` rows in `clusters` clusters on `S^{dim-1}` with concentration `kappa`.
    pub fn new(dim: usize, clusters: usize, rows: usize, kappa: f64, seed: u64) -> VmfMixture {
        VmfMixture {
            dim,
            clusters,
            rows,
            kappa,
            seed,
        }
    }

    /// Draws the mixture.
    pub fn generate(&self) -> Result<Mixture, SynthError> {
        let bad = |m: &str| Err(SynthError::Parameters(m.to_string()));
        if self.dim < 2 {
            return bad("dimension must be at least 2");
        }
        if self.clusters == 0 {
            return bad("need at least one cluster");
        }
        if self.rows < self.clusters {
            return bad("need at least one row per cluster");
        }
        if !(self.kappa.is_finite() && self.kappa > 0.0) {
            return bad("kappa must be finite and positive");
        }
        let (d, k) = (self.dim, self.clusters);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed);
        let mut centres = vec![0.0f64; k * d];
        for c in centres.chunks_exact_mut(d) {
            // A standard normal vector has norm zero with probability zero; redraw anyway.
            loop {
                for v in c.iter_mut() {
                    *v = standard_normal(&mut rng);
                }
                let n = c.iter().map(|v| v * v).sum::<f64>().sqrt();
                if n > 1e-6 {
                    c.iter_mut().for_each(|v| *v /= n);
                    break;
                }
            }
        }
        let mut features = Vec::with_capacity(self.rows * d);
        let mut labels = Vec::with_capacity(self.rows);
        let mut z = vec![0.0f64; d];
        for i in 0..self.rows {
            let c = i % k;
            Posterior::VonMisesFisher
                .sample(&centres[c * d..(c + 1) * d], self.kappa, &mut rng, &mut z)
                .map_err(SynthError::Sample)?;
            features.extend(z.iter().map(|&v| v as f32));
            labels.push(c as i64);
        }
        let columns = (0..d).map(|j| format!("x{j}")).collect();
        let data = Dataset::new(columns, features, Some(labels)).map_err(SynthError::Parameters)?;
        Ok(Mixture { data, centres })
    }
}
