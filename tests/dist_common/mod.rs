//! Helpers shared by the `dist_*` tests (not a test target itself).
#![allow(dead_code)]

use core::convert::Infallible;
use rand_core::{SeedableRng, TryRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A unit vector in `R^m` from a normalised Gaussian, seeded.
pub fn random_unit(m: usize, seed: u64) -> Vec<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let v: Vec<f64> = (0..m)
        .map(|_| hvae::dist::rng::standard_normal::<f64, _>(&mut rng))
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Two-sided one-sample Kolmogorov-Smirnov p-value from the CDF values of the sample
/// (Stephens' finite-n correction of the asymptotic Kolmogorov law; accurate to about
/// 1e-3 in p for n >= 100, far finer than the 0.01 threshold needs).
pub fn ks_pvalue(mut cdfs: Vec<f64>) -> f64 {
    cdfs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = cdfs.len() as f64;
    let d = cdfs
        .iter()
        .enumerate()
        .map(|(i, &f)| ((i + 1) as f64 / n - f).max(f - i as f64 / n))
        .fold(0.0, f64::max);
    let sn = n.sqrt();
    let lambda = (sn + 0.12 + 0.11 / sn) * d;
    let mut p = 0.0;
    for j in 1..=100 {
        let j = j as f64;
        let term = 2.0 * (-1f64).powi(j as i32 - 1) * (-2.0 * j * j * lambda * lambda).exp();
        p += term;
        if term.abs() < 1e-12 {
            break;
        }
    }
    p.clamp(0.0, 1.0)
}

/// CDF of `w = mu . z` under vMF(M, kappa): the density of the angle `theta = acos w`
/// is proportional to `e^{kappa (cos theta - 1)} sin^{M-2} theta` on `[0, pi]`; its
/// running integral is tabulated by the trapezoidal rule on 200 000 steps over
/// `[0, theta_max]` (the mass beyond `theta_max` is below `e^{-200}`), so the CDF is good
/// to about 1e-8.
pub fn vmf_marginal_cdf(m: usize, k: f64) -> impl Fn(f64) -> f64 {
    let steps = 200_000usize;
    let tmax = (20.0 * ((m as f64 + 1.0) / k).sqrt()).min(std::f64::consts::PI);
    let h = tmax / steps as f64;
    let dens = |t: f64| (k * (t.cos() - 1.0)).exp() * t.sin().powi(m as i32 - 2);
    let mut cum = vec![0.0; steps + 1];
    for i in 1..=steps {
        let (a, b) = ((i - 1) as f64 * h, i as f64 * h);
        cum[i] = cum[i - 1] + 0.5 * h * (dens(a) + dens(b));
    }
    let total = cum[steps];
    move |w: f64| {
        // P(W <= w) = P(theta >= acos w); acos is evaluated from 1 - w where that is
        // more accurate (theta = 2 asin(sqrt((1 - w)/2))).
        let theta = 2.0 * ((1.0 - w).max(0.0) / 2.0).sqrt().min(1.0).asin();
        if theta >= tmax {
            return 0.0;
        }
        let x = theta / h;
        let i = x.floor() as usize;
        let frac = x - i as f64;
        let c = if i >= steps {
            total
        } else {
            cum[i] + frac * (cum[i + 1] - cum[i])
        };
        ((total - c) / total).clamp(0.0, 1.0)
    }
}

/// A degenerate generator that cycles through a fixed list of words forever (to drive
/// rejection loops into their caps).
pub struct CycleRng(pub Vec<u64>, pub usize);

impl CycleRng {
    fn next(&mut self) -> u64 {
        let w = self.0[self.1 % self.0.len()];
        self.1 += 1;
        w
    }
}

impl TryRng for CycleRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next() >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let w = self.next();
        dst.fill(w as u8);
        Ok(())
    }
}

/// Tracks the worst error of one function over its golden table and fails on the first
/// value outside `rtol * |want| + atol`; prints the worst relative error when dropped
/// (`cargo test -- --nocapture`).
pub struct Check {
    name: String,
    rtol: f64,
    worst: f64,
    at: String,
}

/// Relative tolerance of a golden-value check in `f32`.
pub const R32: f64 = 1e-4;
/// Relative tolerance of a golden-value check in `f64`.
pub const R64: f64 = 1e-10;

/// The checks of `name` in `f32` and in `f64`, in that order, at [`R32`] and [`R64`].
pub fn checks(name: &str) -> [Check; 2] {
    [
        Check::new(format!("{name} f32"), R32),
        Check::new(format!("{name} f64"), R64),
    ]
}

impl Check {
    /// A check of `name` at relative tolerance `rtol`.
    pub fn new(name: impl Into<String>, rtol: f64) -> Self {
        Check {
            name: name.into(),
            rtol,
            worst: 0.0,
            at: String::new(),
        }
    }

    /// Checks one value: `got` against `want` at the point `what`, with the absolute
    /// floor `atol` (0 unless the value crosses zero).
    pub fn at(&mut self, what: impl core::fmt::Display, got: f64, want: f64, atol: f64) {
        let err = (got - want).abs();
        assert!(
            err <= self.rtol * want.abs() + atol,
            "{} at {what}: got {got:e}, want {want:e} (rel {:e}, atol {atol:e})",
            self.name,
            err / want.abs()
        );
        // The worst relative error where it is meaningful (where the relative part of the
        // tolerance dominates the absolute floor).
        let rel = err / want.abs().max(1e-300);
        if self.rtol * want.abs() >= atol && rel > self.worst {
            self.worst = rel;
            self.at = what.to_string();
        }
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        eprintln!(
            "{:<32} worst relative error {:.2e} at {}",
            self.name, self.worst, self.at
        );
    }
}

/// The rows of the golden table `tests/golden/{name}.csv` (written by
/// `host-tools/reference/golden.py`; `#` lines say where the values come from and what
/// each of the `N` columns is). Each value is the shortest decimal of an `f64`, so
/// parsing gives back the reference's bits. Panics on a missing file, an empty table or
/// a row that is not `N` numbers: a golden test must never pass on no data.
pub fn golden<const N: usize>(name: &str) -> Vec<[f64; N]> {
    let path = format!("{}/tests/golden/{name}.csv", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rows: Vec<[f64; N]> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let v: Vec<f64> = l
                .split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("{path}: {x:?}: {e}"))
                })
                .collect();
            v.try_into()
                .unwrap_or_else(|v: Vec<f64>| panic!("{path}: {} values, not {N}", v.len()))
        })
        .collect();
    assert!(!rows.is_empty(), "{path}: no rows");
    rows
}
