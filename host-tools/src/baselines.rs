//! The baselines every model is compared with, run on the same data by the tool itself.
//!
//! - [`kmeans`]: Euclidean k-means on the raw features, k-means++ seeding, the best of
//!   several restarts by inertia. This is `linfa-clustering`'s `KMeans` (Lloyd
//!   iterations, stops when no centroid moves more than `1e-4` or after 300 iterations);
//!   the data are copied once into an `f64` `ndarray` for it.
//! - [`spherical_kmeans`]: the core's [`hvae::train::kmeans::spherical_kmeans`] (greedy
//!   k-means++ on the sphere, then Lloyd iterations on cosines) on the rows as
//!   directions, the best of several restarts by mean cosine. It is the very routine that
//!   initialises the model's centres, so the comparison is like for like.
//!
//! Both are deterministic functions of the data and the seed.

use linfa::traits::{Fit, Predict};
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use ndarray::Array2;
use rand_core::SeedableRng;

/// How a baseline is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaselineConfig {
    /// Number of clusters.
    pub k: usize,
    /// Independent runs; the best is kept.
    pub restarts: usize,
    /// Most Lloyd iterations per run.
    pub max_iter: usize,
    /// Seed of the random draws.
    pub seed: u64,
}

impl BaselineConfig {
    /// `k` clusters, 10 restarts, at most 300 iterations, seed 0.
    pub fn new(k: usize) -> BaselineConfig {
        BaselineConfig {
            k,
            restarts: 10,
            max_iter: 300,
            seed: 0,
        }
    }

    fn check(&self, n: usize) -> Result<(), BaselineError> {
        if self.k == 0 {
            return Err(BaselineError::NoClusters);
        }
        if self.k > n {
            return Err(BaselineError::MoreClustersThanRows { k: self.k, n });
        }
        if self.restarts == 0 {
            return Err(BaselineError::NoRestarts);
        }
        Ok(())
    }
}

/// Why a baseline could not run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BaselineError {
    /// `k` is zero.
    #[error("need at least one cluster")]
    NoClusters,
    /// More clusters than rows.
    #[error("{k} clusters for {n} rows")]
    MoreClustersThanRows {
        /// Clusters asked for.
        k: usize,
        /// Rows in the data.
        n: usize,
    },
    /// Zero restarts.
    #[error("need at least one restart")]
    NoRestarts,
    /// The feature matrix is not `n x dim`.
    #[error("the feature matrix is not a whole number of rows")]
    Shape,
    /// The k-means library failed.
    #[error("k-means failed: {0}")]
    KMeans(String),
    /// The core's spherical k-means refused the data (e.g. a row of zeros has no
    /// direction).
    #[error("spherical k-means: {0}")]
    Spherical(hvae::train::kmeans::KMeansError),
}

/// Euclidean k-means (k-means++ seeding, best of `cfg.restarts` runs by inertia) on the
/// rows of the row-major `features` (`dim` columns). Returns one label in `0..k` per row.
pub fn kmeans(
    features: &[f32],
    dim: usize,
    cfg: &BaselineConfig,
) -> Result<Vec<usize>, BaselineError> {
    if dim == 0 || !features.len().is_multiple_of(dim) {
        return Err(BaselineError::Shape);
    }
    let n = features.len() / dim;
    cfg.check(n)?;
    let x = Array2::from_shape_vec((n, dim), features.iter().map(|&v| f64::from(v)).collect())
        .map_err(|_| BaselineError::Shape)?;
    let rng = <linfa_rand_xoshiro::Xoshiro256Plus as linfa_rand_xoshiro::rand_core::SeedableRng>::seed_from_u64(cfg.seed);
    let model = KMeans::params_with_rng(cfg.k, rng)
        .n_runs(cfg.restarts)
        .max_n_iterations(cfg.max_iter as u64)
        .tolerance(1e-4)
        .fit(&DatasetBase::from(x.view()))
        .map_err(|e| BaselineError::KMeans(crate::error::one_line(&e.to_string())))?;
    Ok(model.predict(&x).to_vec())
}

/// Outcome of [`spherical_kmeans`].
#[derive(Clone, Debug, PartialEq)]
pub struct SphericalResult {
    /// One label in `0..k` per row.
    pub labels: Vec<usize>,
    /// Unit centres, `k x dim` row-major.
    pub centres: Vec<f32>,
    /// Mean cosine of each row to its centre (the objective of the best run).
    pub objective: f32,
}

/// Spherical k-means with the core's [`hvae::train::kmeans::spherical_kmeans`]: the best of
/// `cfg.restarts` runs (largest mean cosine), all drawing from one seeded
/// `Xoshiro256PlusPlus` stream. A row of zeros is an error (it has no direction).
pub fn spherical_kmeans(
    features: &[f32],
    dim: usize,
    cfg: &BaselineConfig,
) -> Result<SphericalResult, BaselineError> {
    if dim == 0 || !features.len().is_multiple_of(dim) {
        return Err(BaselineError::Shape);
    }
    let n = features.len() / dim;
    cfg.check(n)?;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let mut centres = vec![0.0f32; cfg.k * dim];
    let mut scratch = vec![0.0f32; hvae::train::kmeans::scratch_len(cfg.k, dim)];
    let mut labels = vec![0u8; n];
    let mut best: Option<SphericalResult> = None;
    for _ in 0..cfg.restarts {
        let info = hvae::train::kmeans::spherical_kmeans(
            features,
            dim,
            cfg.k,
            cfg.max_iter,
            &mut rng,
            &mut centres,
            &mut scratch,
            &mut labels,
        )
        .map_err(BaselineError::Spherical)?;
        if best.as_ref().is_none_or(|b| info.objective > b.objective) {
            best = Some(SphericalResult {
                labels: labels.iter().map(|&l| usize::from(l)).collect(),
                centres: centres.clone(),
                objective: info.objective,
            });
        }
    }
    best.ok_or(BaselineError::NoRestarts)
}
