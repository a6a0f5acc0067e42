//! Training on the leading principal components of wide inputs, and the model that
//! comes out taking the raw features all the same.
//!
//! A set with many more features than the sphere has dimensions (a sampled series, an
//! image) trains on the `m` leading principal components of its normalised features
//! ([`Projection::fit`]): the rows are normalised by the core's rule
//! ([`hvae::infer::normalise`]), projected onto the components ([`Projection::apply`]),
//! and the network, the centres and the choice between the models (its neighbour graph
//! on the components normalised as any features are) then see `m` features. Two things
//! stay with the data as given ([`crate::train::Prepared`]): each row's neighbours are
//! mined on the raw features, as they would be without the projection, and the
//! components share one scale (their variances averaging about 1), so that a component
//! of little variance (mostly noise) is not stretched to the spread of the first. The projection is linear, so it folds
//! exactly into the trained model's first layer and its reconstruction layer
//! ([`Projection::fold`]): the model a device runs takes the `D` raw features, has the
//! shape and budget it would have without the projection, and normalises them by the
//! rule a device's own fitting and drift tracking use.
//!
//! Why: a first layer with a weight per raw feature costs time in proportion to `D` and
//! fits the few hundred rows such sets have closely, where the leading components hold
//! the variation the clusters are made of. What it does to the quality suite, and why it
//! is not the default: docs/benchmarks.md, "Wide inputs on their leading principal
//! components".
//!
//! Cost: a thin singular value decomposition of the normalised `n x D` rows (in `f64`,
//! nalgebra), about `4 n D min(n, D)` operations, once per training.

use hvae::shape::TensorId;
use hvae::{Likelihood, VecModel};
use nalgebra::DMatrix;

use crate::train::{fit_normalisation_for_training, normalised, FitError};

/// `hvae train --components`' default: 0, every set trains on its raw features (on the
/// quality suite no number of components keeps every bar the raw features meet: the
/// tuned half's steadiness or the int8 models' fidelity; docs/benchmarks.md).
pub const DEFAULT_COMPONENTS: usize = 0;

/// Most sweeps of the singular value decomposition before it gives up (it converges in
/// a few per singular value).
const MAX_SWEEPS: usize = 100_000;

/// The projection of a data set's normalised rows onto their leading principal
/// components.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// The raw features' normalisation (`D` values each), the core's rule.
    offset: Vec<f32>,
    scale: Vec<f32>,
    /// The components, `m x D` row-major: orthonormal directions in the normalised
    /// features, by decreasing variance.
    basis: Vec<f64>,
}

impl Projection {
    /// The projection of `x` (`n x d`, raw units) onto its `m` leading principal
    /// components, or `None` where it would not shrink the input (`m == 0`, `d <= m`) or
    /// cannot be folded into a model whose likelihood is `likelihood` (a Bernoulli
    /// decoder reconstructs raw values in `[0, 1]`, not components). A set of `n <= m`
    /// rows keeps as many components as it has (at most `n`).
    pub fn fit(
        x: &[f32],
        d: usize,
        m: usize,
        likelihood: Likelihood,
    ) -> Result<Option<Projection>, FitError> {
        if m == 0 || d <= m || likelihood != Likelihood::Gaussian {
            return Ok(None);
        }
        let (offset, scale) = fit_normalisation_for_training(x, d)?;
        let xn = normalised(x, &offset, &scale);
        let n = xn.len() / d;
        // Each feature is centred by the normalisation, so the right singular vectors
        // of the rows are the principal axes, in decreasing order of variance.
        let rows = DMatrix::from_row_iterator(n, d, xn.iter().map(|&v| f64::from(v)));
        let svd = nalgebra::SVD::try_new(rows, false, true, f64::EPSILON, MAX_SWEEPS)
            .ok_or_else(|| FitError::Config("principal components did not converge".into()))?;
        let v_t = svd
            .v_t
            .ok_or_else(|| FitError::Config("principal components not computed".into()))?;
        let m = m.min(v_t.nrows());
        let basis = (0..m)
            .flat_map(|i| v_t.row(i).iter().copied().collect::<Vec<_>>())
            .collect();
        Ok(Some(Projection {
            offset,
            scale,
            basis,
        }))
    }

    /// Raw features in, components out.
    pub fn input_len(&self) -> usize {
        self.offset.len()
    }

    /// The number of components.
    pub fn output_len(&self) -> usize {
        self.basis.len() / self.offset.len()
    }

    /// The rows of `x` (`n x D`, raw units) as their components (`n x m`): normalised as
    /// a model with [`Projection::fold`]'s normalisation does, then projected (each
    /// component a sum in feature order, in `f64`).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let d = self.input_len();
        normalised(x, &self.offset, &self.scale)
            .chunks_exact(d)
            .flat_map(|row| {
                self.basis.chunks_exact(d).map(move |b| {
                    b.iter()
                        .zip(row)
                        .map(|(&w, &v)| w * f64::from(v))
                        .sum::<f64>() as f32
                })
            })
            .collect()
    }

    /// The model trained on the components as one that takes the raw features.
    ///
    /// With `z = B xn` (the components `B`, the raw features normalised `xn`) and the
    /// trained model's own normalisation of the components `(z - o) * s`, its first layer
    /// `W z' + b` is `(W diag(s) B) xn + (b - W (s * o))`; its reconstruction `y` of the
    /// normalised components is, in the normalised features, `B^T (y / s + o)`, so the
    /// last decoder layer `V h + c` becomes `(B^T diag(1/s) V) h + B^T (c / s + o)`: the
    /// projection of the reconstruction onto the components' span. Every other tensor is
    /// copied. Folded in `f64`, rounded once.
    pub fn fold(&self, model: &VecModel<f32>) -> Result<VecModel<f32>, FitError> {
        let (d, m) = (self.input_len(), self.output_len());
        let inner = *model.shape();
        if inner.input != m {
            return Err(FitError::Config(format!(
                "a model of {} inputs cannot take {m} components",
                inner.input
            )));
        }
        let shape = inner.with_input(d);
        let tensor = |id| {
            model
                .tensor(id)
                .ok_or_else(|| FitError::Config(format!("the trained model has no {id}")))
        };
        let (o, s) = (tensor(TensorId::NormOffset)?, tensor(TensorId::NormScale)?);
        let last = shape.depth() as u8;
        let mut params = Vec::with_capacity(shape.param_len());
        for t in shape.tensors() {
            match t.id {
                TensorId::NormOffset => params.extend_from_slice(&self.offset),
                TensorId::NormScale => params.extend_from_slice(&self.scale),
                TensorId::EncoderWeight(0) => {
                    let w = tensor(t.id)?;
                    for row in w.chunks_exact(m) {
                        params.extend((0..d).map(|j| {
                            (0..m)
                                .map(|i| {
                                    f64::from(row[i]) * f64::from(s[i]) * self.basis[i * d + j]
                                })
                                .sum::<f64>() as f32
                        }));
                    }
                }
                TensorId::EncoderBias(0) => {
                    let (w, b) = (tensor(TensorId::EncoderWeight(0))?, tensor(t.id)?);
                    params.extend(w.chunks_exact(m).zip(b).map(|(row, &b)| {
                        let shift: f64 = (0..m)
                            .map(|i| f64::from(row[i]) * f64::from(s[i]) * f64::from(o[i]))
                            .sum();
                        (f64::from(b) - shift) as f32
                    }));
                }
                TensorId::DecoderWeight(l) if l == last => {
                    let v = tensor(t.id)?;
                    let h = t.cols;
                    for j in 0..d {
                        params.extend((0..h).map(|c| {
                            (0..m)
                                .map(|i| {
                                    self.basis[i * d + j] * f64::from(v[i * h + c])
                                        / f64::from(s[i])
                                })
                                .sum::<f64>() as f32
                        }));
                    }
                }
                TensorId::DecoderBias(l) if l == last => {
                    let c = tensor(t.id)?;
                    let back: Vec<f64> = (0..m)
                        .map(|i| f64::from(c[i]) / f64::from(s[i]) + f64::from(o[i]))
                        .collect();
                    params.extend((0..d).map(|j| {
                        (0..m).map(|i| self.basis[i * d + j] * back[i]).sum::<f64>() as f32
                    }));
                }
                id => params.extend_from_slice(tensor(id)?),
            }
        }
        VecModel::new(shape, params).map_err(|e| FitError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvae::Shape;
    use rand_core::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// `n x d` rows with correlated features on different scales: three latent factors
    /// mixed into `d` features, each feature with its own gain and offset, plus noise.
    fn wide_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut u = move || (rng.next_u32() as f64 / f64::from(u32::MAX)) * 2.0 - 1.0;
        let mix: Vec<f64> = (0..3 * d).map(|_| u()).collect();
        let gain: Vec<f64> = (0..d).map(|j| 1.0 + j as f64).collect();
        (0..n)
            .flat_map(|_| {
                let f = [3.0 * u(), 2.0 * u(), u()];
                let noise: Vec<f64> = (0..d).map(|_| 0.05 * u()).collect();
                (0..d)
                    .map(|j| {
                        let v: f64 = (0..3).map(|k| f[k] * mix[k * d + j]).sum();
                        (gain[j] * (v + noise[j]) + 10.0 * j as f64) as f32
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn components_are_the_principal_axes_of_the_normalised_rows() {
        let (n, d, m) = (300, 12, 4);
        let x = wide_rows(n, d, 1);
        let p = Projection::fit(&x, d, m, Likelihood::Gaussian)
            .unwrap()
            .unwrap();
        assert_eq!((p.input_len(), p.output_len()), (d, m));
        // The covariance of the normalised rows, formed directly.
        let xn = normalised(&x, &p.offset, &p.scale);
        let mut cov = vec![0f64; d * d];
        for row in xn.chunks_exact(d) {
            for a in 0..d {
                for b in 0..d {
                    cov[a * d + b] += f64::from(row[a]) * f64::from(row[b]) / n as f64;
                }
            }
        }
        let quad = |v: &[f64]| -> Vec<f64> {
            (0..d)
                .map(|a| (0..d).map(|b| cov[a * d + b] * v[b]).sum())
                .collect()
        };
        let mut last = f64::INFINITY;
        for (i, b) in p.basis.chunks_exact(d).enumerate() {
            // Unit length, orthogonal to the others, an eigenvector of the covariance
            // (residual of C b = lambda b), in decreasing order of its eigenvalue.
            for (k, c) in p.basis.chunks_exact(d).enumerate() {
                let dot: f64 = b.iter().zip(c).map(|(u, v)| u * v).sum();
                let want = if i == k { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-9, "{i}.{k}: {dot}");
            }
            let cb = quad(b);
            let lambda: f64 = cb.iter().zip(b).map(|(u, v)| u * v).sum();
            let residual: f64 = cb
                .iter()
                .zip(b)
                .map(|(c, v)| (c - lambda * v).powi(2))
                .sum();
            assert!(residual.sqrt() < 1e-6 * lambda.max(1.0), "{i}: {residual}");
            assert!(lambda <= last + 1e-9, "{i}: {lambda} after {last}");
            last = lambda;
        }
        // Three factors: the first three components hold nearly all of the variance.
        let total: f64 = (0..d).map(|a| cov[a * d + a]).sum();
        let held: f64 = p
            .basis
            .chunks_exact(d)
            .take(3)
            .map(|b| quad(b).iter().zip(b).map(|(u, v)| u * v).sum::<f64>())
            .sum();
        assert!(held / total > 0.95, "{held} of {total}");
        // `apply` is the projection of the normalised rows.
        let z = p.apply(&x);
        for (zr, xr) in z.chunks_exact(m).zip(xn.chunks_exact(d)) {
            for (zi, b) in zr.iter().zip(p.basis.chunks_exact(d)) {
                let want: f64 = b.iter().zip(xr).map(|(w, v)| w * f64::from(*v)).sum();
                assert!((f64::from(*zi) - want).abs() < 1e-5 * want.abs().max(1.0));
            }
        }
    }

    #[test]
    fn no_projection_where_it_would_not_shrink_or_fold() {
        let x = wide_rows(50, 12, 2);
        for (m, lik) in [
            (0, Likelihood::Gaussian),
            (12, Likelihood::Gaussian),
            (20, Likelihood::Gaussian),
            (4, Likelihood::Bernoulli),
        ] {
            assert_eq!(
                Projection::fit(&x, 12, m, lik).unwrap(),
                None,
                "{m} {lik:?}"
            );
        }
        // Fewer rows than components: as many as the rows give.
        let few = wide_rows(5, 12, 3);
        let p = Projection::fit(&few, 12, 8, Likelihood::Gaussian)
            .unwrap()
            .unwrap();
        assert_eq!(p.output_len(), 5);
    }

    /// The folded model on the raw features answers as the trained model on the
    /// components: the same mean directions, concentrations and cluster probabilities
    /// (within `f32` rounding of the two orders of the same sums), and a reconstruction
    /// that is the trained one mapped back through the components.
    #[test]
    fn the_folded_model_answers_as_the_trained_one() {
        let (n, d, m) = (60, 20, 5);
        let x = wide_rows(n, d, 4);
        let p = Projection::fit(&x, d, m, Likelihood::Gaussian)
            .unwrap()
            .unwrap();
        let z = p.apply(&x);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        for hidden in [&[8][..], &[8, 6][..]] {
            let shape = Shape::new(m, hidden, 4, 3);
            let mut inner = VecModel::<f32>::with_shape(shape, &mut rng).unwrap();
            let (o, s) = crate::train::fit_normalisation(&z, m).unwrap();
            // Offsets away from the components' own means, so that the bias's shift shows.
            let o: Vec<f32> = o.iter().map(|v| v + 0.3).collect();
            inner.set_normalisation(&o, &s).unwrap();
            let folded = p.fold(&inner).unwrap();
            assert_eq!(*folded.shape(), shape.with_input(d));
            assert_eq!(folded.tensor(TensorId::NormOffset).unwrap(), &p.offset[..]);
            let (mut w1, mut w2) = (vec![0f32; inner.work_len()], vec![0f32; folded.work_len()]);
            let (mut r1, mut r2) = (vec![0f32; m], vec![0f32; d]);
            for (zr, xr) in z.chunks_exact(m).zip(x.chunks_exact(d)) {
                let a = inner.segment(zr, &mut w1).unwrap();
                let b = folded.segment(xr, &mut w2).unwrap();
                let cos: f32 = a.mu.iter().zip(b.mu).map(|(u, v)| u * v).sum();
                assert!(cos > 1.0 - 1e-5, "{cos}");
                assert!(
                    (a.kappa - b.kappa).abs() <= 1e-3 * a.kappa,
                    "{} {}",
                    a.kappa,
                    b.kappa
                );
                for (pa, pb) in a.probs.iter().zip(b.probs) {
                    assert!((pa - pb).abs() < 1e-4, "{pa} {pb}");
                }
                inner.reconstruct(zr, &mut w1, &mut r1).unwrap();
                folded.reconstruct(xr, &mut w2, &mut r2).unwrap();
                for (j, got) in r2.iter().enumerate() {
                    let want: f64 = (0..m)
                        .map(|i| {
                            p.basis[i * d + j]
                                * (f64::from(r1[i]) / f64::from(s[i]) + f64::from(o[i]))
                        })
                        .sum();
                    assert!((f64::from(*got) - want).abs() < 1e-4 * want.abs().max(1.0));
                }
            }
            // A model of another width is refused.
            let other =
                VecModel::<f32>::with_shape(Shape::new(m + 1, hidden, 4, 3), &mut rng).unwrap();
            assert!(p.fold(&other).is_err());
        }
    }
}
