//! vMF and Power Spherical closed forms against SciPy/mpmath golden values
//! (`tests/golden/*.csv`, written by `host-tools/reference/golden.py`), in `f32` and
//! `f64`, over M in {2, 3, 5, 8, 16, 64} x kappa in {1e-3, 0.1, 1, 10, 100, 1e3, 1e4}.
//!
//! Tolerance: relative error at most `1e-4` in `f32` and `1e-10` in `f64`. An absolute
//! floor is added only where the value is a genuine difference of larger quantities that
//! the inputs themselves cannot resolve; each floor is explained where it is set. The
//! worst errors are printed (`cargo test -- --nocapture`).

mod dist_common;

use dist_common::{checks, golden, R32, R64};
use hvae::dist::special::{bessel_ratio, log_sphere_area};
use hvae::Posterior;

/// The unit vector `(w, sqrt(1 - w^2), 0, ...)` in `R^m`.
fn at_cosine(m: usize, w: f64) -> Vec<f64> {
    let mut z = vec![0.0; m];
    z[0] = w;
    z[1] = (1.0 - w * w).max(0.0).sqrt();
    z
}

/// Checks one family's scalar functions; `rows` are (M, kappa, log-normaliser, entropy,
/// KL, dKL/dkappa).
fn scalar_functions(p: Posterior, rows: &[[f64; 6]]) {
    let tag = format!("{p:?}");
    let mut c = [
        checks(&format!("{tag} log_normalizer")),
        checks(&format!("{tag} entropy")),
        checks(&format!("{tag} kl_to_uniform")),
        checks(&format!("{tag} dkl_dkappa")),
    ];
    for &[m, k, logc, ent, kl, dkl] in rows {
        let mu = m as usize;
        let at = format!("M={m} kappa={k}");
        let k32 = k as f32;
        // The entropy is ln|S^{M-1}| - KL and changes sign where the two are equal (M = 2
        // and 3 near kappa = 10..100): floor at 1e-4 (f32) / 1e-10 (f64) of the larger.
        let ent_floor = (log_sphere_area::<f64>(mu).abs()).max(kl.abs());
        let vals = [
            (
                p.log_normalizer(mu, k),
                p.log_normalizer(mu, k32),
                logc,
                0.0,
            ),
            (p.entropy(mu, k), p.entropy(mu, k32), ent, ent_floor),
            (p.kl_to_uniform(mu, k), p.kl_to_uniform(mu, k32), kl, 0.0),
            (p.dkl_dkappa(mu, k), p.dkl_dkappa(mu, k32), dkl, 0.0),
        ];
        for (ci, (v64, v32, want, floor)) in c.iter_mut().zip(vals) {
            ci[1].at(&at, v64, want, R64 * floor);
            ci[0].at(&at, v32 as f64, want, R32 * floor);
        }
    }
}

/// vMF against SciPy, power spherical against closed forms.
#[test]
fn scalar_functions_match_scipy_and_closed_forms() {
    scalar_functions(Posterior::VonMisesFisher, &golden("vmf"));
    scalar_functions(Posterior::PowerSpherical, &golden("ps"));
}

fn log_density(p: Posterior, rows: &[[f64; 4]]) {
    let tag = format!("{p:?}");
    let mut c = checks(&format!("{tag} log_density"));
    for &[m, k, w, want] in rows {
        let m = m as usize;
        let at = format!("M={m} kappa={k} w={w}");
        let mut mu = vec![0.0; m];
        mu[0] = 1.0;
        let z = at_cosine(m, w);
        // The density is as sensitive to z as kappa |dz|: the rounding of w = -0.7 to f32
        // (relative 1.2e-8) moves kappa w by up to 1e4 * 0.7 * 1.2e-8 = 8e-5, and the
        // f32 sum k (w - 1) + (k + log C) rounds at the size of k (w - 1). Floor: a few
        // f32 ulp of kappa |w - 1| (and 1e-10 of it in f64).
        let floor = k * (1.0 - w).abs();
        c[1].at(&at, p.log_density(&mu, k, &z), want, R64 * 1e-2 * floor);
        let mu32: Vec<f32> = mu.iter().map(|&v| v as f32).collect();
        let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        let w32 = z32[0] as f64;
        // Compare with the exact value at the rounded cosine (d log q/dw = kappa for vMF,
        // kappa/(1 + w) for PS).
        let slope = match p {
            Posterior::VonMisesFisher => k,
            Posterior::PowerSpherical => k / (1.0 + w),
        };
        let want32 = want + slope * (w32 - w);
        c[0].at(
            &at,
            p.log_density(&mu32, k as f32, &z32) as f64,
            want32,
            4.0 * f32::EPSILON as f64 * floor,
        );
    }
}

/// vMF against SciPy, power spherical against its closed form.
#[test]
fn log_density_matches_scipy_and_the_closed_form() {
    log_density(Posterior::VonMisesFisher, &golden("vmf_logpdf"));
    log_density(Posterior::PowerSpherical, &golden("ps_logpdf"));
}

#[test]
fn mean_cosine_and_consistency() {
    for m in [2usize, 3, 5, 8, 16, 64] {
        for k in [1e-3f64, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4] {
            let p = Posterior::VonMisesFisher;
            assert_eq!(p.mean_cosine(m, k), bessel_ratio(m, k));
            let ps = Posterior::PowerSpherical.mean_cosine(m, k);
            assert!((ps - k / (m as f64 - 1.0 + k)).abs() <= 1e-15);
            // Entropy + KL = ln|S^{M-1}| for both families (KL = -H + ln|S|).
            for p in [Posterior::VonMisesFisher, Posterior::PowerSpherical] {
                let s = p.entropy(m, k) + p.kl_to_uniform(m, k);
                let want = log_sphere_area::<f64>(m);
                let scale = p.kl_to_uniform(m, k).abs().max(want.abs());
                assert!((s - want).abs() <= 1e-12 * scale, "{p:?} M={m} k={k}");
            }
            // dKL/dkappa is the derivative of KL: central difference, f64, step 1e-4 k;
            // truncation O(h^2 KL''') and rounding O(eps KL / h) stay below 1e-6 relative.
            for p in [Posterior::VonMisesFisher, Posterior::PowerSpherical] {
                let h = 1e-4 * k;
                let fd = (p.kl_to_uniform(m, k + h) - p.kl_to_uniform(m, k - h)) / (2.0 * h);
                let d = p.dkl_dkappa(m, k);
                let tol = 1e-6 * d.abs() + 1e-12 * p.kl_to_uniform(m, k).abs() / h;
                assert!((fd - d).abs() <= tol, "{p:?} M={m} k={k}: fd {fd} vs {d}");
            }
        }
    }
}

#[test]
fn scalar_functions_at_the_edges() {
    for p in [Posterior::VonMisesFisher, Posterior::PowerSpherical] {
        for m in [2usize, 3, 64] {
            // kappa = 0 is the uniform law; negative kappa is treated as 0.
            assert_eq!(p.kl_to_uniform(m, 0.0f64), 0.0);
            assert_eq!(p.dkl_dkappa(m, 0.0f64), 0.0);
            assert_eq!(p.mean_cosine(m, -1.0f64), 0.0);
            let h0 = p.entropy(m, 0.0f64);
            assert!(
                (h0 - log_sphere_area::<f64>(m)).abs() < 1e-12,
                "{p:?} M={m}"
            );
            assert_eq!(p.kl_to_uniform(m, -3.0f64), 0.0);
            assert!(p.kl_to_uniform(m, f64::NAN).is_nan());
            // Far beyond kappa_max: finite, KL growing like (M-1)/2 ln kappa.
            for k in [1e6f32, 1e9] {
                assert!(p.kl_to_uniform(m, k).is_finite(), "{p:?} M={m} k={k}");
                assert!(p.dkl_dkappa(m, k).is_finite());
                assert!(p.log_normalizer(m, k).is_finite());
            }
        }
        // Wrong lengths: NaN, no panic.
        assert!(p.log_density(&[1.0f64, 0.0], 1.0, &[1.0]).is_nan());
        assert!(p.log_density(&[1.0f64], 1.0, &[1.0]).is_nan());
    }
}

/// Between the golden points: every M in 2..=64 and 97 kappas log-spaced over
/// [1e-3, 1e4], f32 against f64 (the f64 functions match the golden tables to 1e-10).
/// Relative tolerance 1e-4; the entropy gets the zero-crossing floor of the golden test
/// and so does the log-normaliser, `-ln|S^{M-1}| - ln Ĩ` (vMF) or its PS analogue,
/// which crosses zero too (e.g. M = 20, kappa = 5.2): floor `|ln|S|| + |log C + ln|S||`.
/// The f32 kappa is rounded (relative 6e-8), which moves each function by at most its
/// condition number (<= ~M/2 here) times that.
#[test]
fn f32_matches_f64_between_golden_points() {
    let mut worst = [0.0f64; 5];
    for p in [Posterior::VonMisesFisher, Posterior::PowerSpherical] {
        for m in 2usize..=64 {
            for i in 0..=96 {
                let k32 = 10f32.powf(-3.0 + 7.0 * i as f32 / 96.0);
                let k = k32 as f64;
                let ls = log_sphere_area::<f64>(m);
                let lc = p.log_normalizer(m, k);
                let pairs = [
                    (
                        p.log_normalizer(m, k32) as f64,
                        lc,
                        ls.abs() + (lc + ls).abs(),
                    ),
                    (
                        p.entropy(m, k32) as f64,
                        p.entropy(m, k),
                        log_sphere_area::<f64>(m).abs().max(p.kl_to_uniform(m, k)),
                    ),
                    (p.kl_to_uniform(m, k32) as f64, p.kl_to_uniform(m, k), 0.0),
                    (p.dkl_dkappa(m, k32) as f64, p.dkl_dkappa(m, k), 0.0),
                    (p.mean_cosine(m, k32) as f64, p.mean_cosine(m, k), 0.0),
                ];
                for (j, (got, want, floor)) in pairs.into_iter().enumerate() {
                    let err = (got - want).abs();
                    assert!(
                        err <= R32 * (want.abs() + floor),
                        "{p:?} fn {j} M={m} kappa={k}: {got} vs {want}"
                    );
                    if floor == 0.0 {
                        worst[j] = worst[j].max(err / want.abs());
                    }
                }
            }
        }
    }
    let w: Vec<String> = worst.iter().map(|e| format!("{e:.2e}")).collect();
    eprintln!("f32 sweep worst relative errors (log C, H, KL, dKL, E[w]): {w:?}");
}
