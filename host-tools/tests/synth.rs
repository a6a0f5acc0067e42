//! The synthetic vMF mixture: deterministic, on the sphere, balanced, with the right
//! concentration.

use hvae::Posterior;
use hvae_host::synth::{SynthError, VmfMixture};

#[test]
fn deterministic_and_seed_dependent() {
    let a = VmfMixture::new(6, 3, 90, 20.0, 1).generate().unwrap();
    let b = VmfMixture::new(6, 3, 90, 20.0, 1).generate().unwrap();
    let c = VmfMixture::new(6, 3, 90, 20.0, 2).generate().unwrap();
    assert_eq!(a, b);
    assert_ne!(a.data.features(), c.data.features());
}

#[test]
fn rows_are_unit_balanced_and_labelled() {
    let m = VmfMixture::new(4, 5, 103, 5.0, 9).generate().unwrap();
    let d = &m.data;
    assert_eq!((d.len(), d.dim()), (103, 4));
    assert_eq!(d.columns(), ["x0", "x1", "x2", "x3"]);
    for r in d.rows() {
        let n: f32 = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
    let labels = d.labels().unwrap();
    for (i, &l) in labels.iter().enumerate() {
        assert_eq!(l, (i % 5) as i64);
    }
    for c in m.centres.chunks_exact(4) {
        let n: f64 = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-12);
    }
}

#[test]
fn mean_cosine_matches_the_vmf_mean() {
    // E[mu . z] = A_M(kappa) for a vMF draw; 4000 draws give a standard error ~ 1e-3.
    let (dim, kappa) = (8, 10.0);
    let m = VmfMixture::new(dim, 2, 4000, kappa, 5).generate().unwrap();
    let labels = m.data.labels().unwrap();
    let mean: f64 = m
        .data
        .rows()
        .zip(labels)
        .map(|(r, &l)| {
            let c = &m.centres[l as usize * dim..(l as usize + 1) * dim];
            r.iter().zip(c).map(|(x, y)| f64::from(*x) * y).sum::<f64>()
        })
        .sum::<f64>()
        / 4000.0;
    let want = Posterior::VonMisesFisher.mean_cosine(dim, kappa);
    assert!(
        (mean - want).abs() < 6e-3,
        "mean cosine {mean}, A_M = {want}"
    );
}

#[test]
fn bad_parameters() {
    for bad in [
        VmfMixture::new(1, 2, 10, 1.0, 0),
        VmfMixture::new(3, 0, 10, 1.0, 0),
        VmfMixture::new(3, 4, 3, 1.0, 0),
        VmfMixture::new(3, 2, 10, 0.0, 0),
        VmfMixture::new(3, 2, 10, f64::NAN, 0),
    ] {
        assert!(
            matches!(bad.generate(), Err(SynthError::Parameters(_))),
            "{bad:?}"
        );
    }
}
