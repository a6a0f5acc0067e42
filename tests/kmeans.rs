//! Spherical k-means++ tests: recovery of well-separated clusters, determinism, the
//! monotone objective, degenerate inputs and errors.

use hvae::train::kmeans::{nearest_centre, scratch_len, spherical_kmeans, KMeansError, KMeansInfo};
use hvae::Real;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

fn uniform(r: &mut impl Rng) -> f64 {
    (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Standard normal (Box-Muller).
fn gauss(r: &mut impl Rng) -> f64 {
    let u = 1.0 - uniform(r);
    let v = uniform(r);
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn normalise(x: &mut [f64]) {
    let n = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    x.iter_mut().for_each(|v| *v /= n);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `k` random unit centres on S^{m-1} with pairwise cosine below `max_cos`, and
/// `per` points around each (centre + N(0, sigma^2) per coordinate, renormalised),
/// shuffled. Returns (points row-major, true labels).
fn vmf_like(
    seed: u64,
    m: usize,
    k: usize,
    per: usize,
    sigma: f64,
    max_cos: f64,
) -> (Vec<f64>, Vec<usize>) {
    let mut r = rng(seed ^ 0xDA7A);
    let mut centres: Vec<Vec<f64>> = Vec::new();
    while centres.len() < k {
        let mut c: Vec<f64> = (0..m).map(|_| gauss(&mut r)).collect();
        normalise(&mut c);
        if centres.iter().all(|d| dot(d, &c) < max_cos) {
            centres.push(c);
        }
    }
    let mut rows: Vec<(Vec<f64>, usize)> = Vec::new();
    for (j, c) in centres.iter().enumerate() {
        for _ in 0..per {
            let mut x: Vec<f64> = c.iter().map(|v| v + sigma * gauss(&mut r)).collect();
            normalise(&mut x);
            rows.push((x, j));
        }
    }
    // Fisher-Yates shuffle.
    for i in (1..rows.len()).rev() {
        let j = (r.next_u64() % (i as u64 + 1)) as usize;
        rows.swap(i, j);
    }
    let labels = rows.iter().map(|(_, l)| *l).collect();
    let points = rows.into_iter().flat_map(|(x, _)| x).collect();
    (points, labels)
}

struct Out<T> {
    centres: Vec<T>,
    labels: Vec<u8>,
    info: KMeansInfo<T>,
}

fn run<T: Real>(points: &[T], dim: usize, k: usize, max_iter: usize, seed: u64) -> Out<T> {
    let n = points.len() / dim;
    let mut centres = vec![T::zero(); k * dim];
    let mut scratch = vec![T::zero(); scratch_len(k, dim)];
    let mut labels = vec![0u8; n];
    let info = spherical_kmeans(
        points,
        dim,
        k,
        max_iter,
        &mut rng(seed),
        &mut centres,
        &mut scratch,
        &mut labels,
    )
    .unwrap();
    Out {
        centres,
        labels,
        info,
    }
}

/// True when `pred` equals `truth` up to a permutation of the labels.
fn same_partition(pred: &[u8], truth: &[usize], k: usize) -> bool {
    let mut map = vec![None; k];
    let mut inv = vec![None; 256];
    for (&p, &t) in pred.iter().zip(truth) {
        match (map[t], inv[p as usize]) {
            (None, None) => {
                map[t] = Some(p);
                inv[p as usize] = Some(t);
            }
            (Some(q), Some(s)) if q == p && s == t => {}
            _ => return false,
        }
    }
    true
}

#[test]
fn recovers_well_separated_clusters() {
    let (m, k, per) = (8, 5, 30);
    for seed in 0..12u64 {
        let (points, truth) = vmf_like(seed, m, k, per, 0.05, 0.3);
        let out = run(&points, m, k, 100, seed);
        assert!(
            same_partition(&out.labels, &truth, k),
            "seed {seed}: {:?}",
            out.info
        );
        assert!(out.info.converged, "seed {seed}");
        assert!(out.info.objective > 0.95, "seed {seed}: {:?}", out.info);
        // Centres are unit vectors close to the cluster means.
        for c in out.centres.chunks(m) {
            assert!((dot(c, c) - 1.0).abs() < 1e-12);
        }
        // f32 finds the same partition.
        let p32: Vec<f32> = points.iter().map(|&x| x as f32).collect();
        let out32 = run(&p32, m, k, 100, seed);
        assert!(same_partition(&out32.labels, &truth, k), "f32 seed {seed}");
    }
}

#[test]
fn same_seed_gives_bit_identical_results() {
    let (points, _) = vmf_like(7, 5, 4, 40, 0.3, 0.5);
    let a = run(&points, 5, 4, 50, 99);
    let b = run(&points, 5, 4, 50, 99);
    assert_eq!(a.labels, b.labels);
    assert_eq!(
        a.centres.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        b.centres.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(a.info.objective.to_bits(), b.info.objective.to_bits());
    assert_eq!(a.info, b.info);
    // The seed matters (the first centre is drawn from it).
    let differs = (100..110).any(|s| {
        let c = run(&points, 5, 4, 0, s);
        c.centres != run(&points, 5, 4, 0, 99).centres
    });
    assert!(differs);
}

#[test]
fn rows_are_directions_scaling_changes_nothing() {
    // Power-of-two scalings are exact, so the result is bit-identical.
    let (points, _) = vmf_like(3, 4, 3, 20, 0.2, 0.5);
    let scaled: Vec<f64> = points
        .chunks(4)
        .enumerate()
        .flat_map(|(i, x)| {
            let s = [0.25, 8.0, 1.0, 1024.0][i % 4];
            x.iter().map(move |v| v * s).collect::<Vec<_>>()
        })
        .collect();
    let a = run(&points, 4, 3, 30, 5);
    let b = run(&scaled, 4, 3, 30, 5);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.centres, b.centres);
    assert_eq!(a.info, b.info);
}

#[test]
fn objective_never_decreases_across_iterations() {
    // Overlapping clusters so that Lloyd takes many iterations.
    for seed in 0..6u64 {
        let (points, _) = vmf_like(seed + 50, 3, 6, 50, 0.6, 0.9);
        let mut prev = f64::NEG_INFINITY;
        let mut last = None;
        let mut most = 0;
        for max_iter in 0..40 {
            let out = run(&points, 3, 6, max_iter, seed);
            assert!(out.info.iterations <= max_iter);
            assert!(
                out.info.objective >= prev - 1e-12,
                "seed {seed}, max_iter {max_iter}: {} < {prev}",
                out.info.objective
            );
            prev = out.info.objective;
            most = most.max(out.info.iterations);
            if out.info.converged {
                // More iterations change nothing.
                if let Some(l) = &last {
                    assert_eq!(&out.labels, l);
                }
                last = Some(out.labels);
            }
        }
        assert!(
            most >= 4,
            "seed {seed}: only {most} iterations, test too easy"
        );
        assert!(last.is_some(), "seed {seed}: never converged");
    }
}

#[test]
fn k_equal_to_n_puts_every_point_in_its_own_cluster() {
    let dim = 4;
    let mut r = rng(11);
    // Non-unit rows: the centres are their directions.
    let points: Vec<f64> = (0..7 * dim).map(|_| gauss(&mut r) * 3.0).collect();
    let out = run(&points, dim, 7, 10, 1);
    let mut seen = out.labels.clone();
    seen.sort();
    assert_eq!(seen, (0..7).collect::<Vec<u8>>());
    assert!((out.info.objective - 1.0).abs() < 1e-14, "{:?}", out.info);
    assert!(out.info.converged);
    for (i, x) in points.chunks(dim).enumerate() {
        let l = out.labels[i] as usize;
        let mut u = x.to_vec();
        normalise(&mut u);
        for (a, b) in out.centres[l * dim..(l + 1) * dim].iter().zip(&u) {
            assert!((a - b).abs() < 1e-15);
        }
    }
}

#[test]
fn k_one_is_the_normalised_mean() {
    let (points, _) = vmf_like(4, 3, 1, 25, 0.3, 1.0);
    let out = run(&points, 3, 1, 10, 0);
    assert!(out.labels.iter().all(|&l| l == 0));
    let mut mean = [0.0; 3];
    for x in points.chunks(3) {
        mean.iter_mut().zip(x).for_each(|(m, v)| *m += v);
    }
    normalise(&mut mean);
    for (c, m) in out.centres.iter().zip(&mean) {
        assert!((c - m).abs() < 1e-12);
    }
    assert!(out.info.converged && out.info.iterations == 1);
}

#[test]
fn duplicated_points_reseed_empty_clusters_and_converge() {
    // Two distinct directions, three copies each, three clusters: k-means++ must draw a
    // duplicate centre; the empty cluster is re-seeded and the run still converges with
    // no cluster empty.
    let a = [1.0, 0.0, 0.0];
    let b = [0.0, 1.0, 0.0];
    let points: Vec<f64> = [a, b, a, b, a, b].concat();
    for seed in 0..10 {
        let out = run(&points, 3, 3, 20, seed);
        assert!(out.info.converged, "seed {seed}: {:?}", out.info);
        assert!(out.info.reseeds >= 1, "seed {seed}: {:?}", out.info);
        for j in 0..3u8 {
            assert!(out.labels.contains(&j), "seed {seed}: {:?}", out.labels);
        }
        assert_eq!(out.info.objective, 1.0);
        // Points of one direction never share a cluster with the other direction.
        for i in 0..6 {
            for j in 0..6 {
                if out.labels[i] == out.labels[j] {
                    assert_eq!(i % 2, j % 2);
                }
            }
        }
    }
}

#[test]
fn many_clusters_fit_u8_labels() {
    let mut r = rng(5);
    let points: Vec<f32> = (0..300 * 3).map(|_| gauss(&mut r) as f32).collect();
    let out = run(&points, 3, 255, 5, 2);
    assert!(out.labels.iter().all(|&l| l < 255));
    assert!(out.info.objective > 0.9);
}

#[test]
fn nearest_centre_picks_largest_cosine() {
    let centres = [1.0f64, 0.0, 0.0, 1.0, -1.0, 0.0];
    assert_eq!(nearest_centre(&[0.2, 2.0], &centres, 2).unwrap().0, 1);
    let (j, cos) = nearest_centre(&[-3.0, 0.1], &centres, 2).unwrap();
    assert_eq!(j, 2);
    assert!((cos - 3.0 / (9.01f64).sqrt()).abs() < 1e-15);
    // Agrees with the labels k-means assigns.
    let (points, _) = vmf_like(9, 4, 3, 10, 0.1, 0.3);
    let out = run(&points, 4, 3, 50, 0);
    for (x, l) in points.chunks(4).zip(&out.labels) {
        assert_eq!(nearest_centre(x, &out.centres, 4).unwrap().0, *l as usize);
    }
    assert_eq!(
        nearest_centre(&[1.0, 0.0], &[], 2),
        Err(KMeansError::NoClusters)
    );
    assert_eq!(
        nearest_centre(&[1.0], &centres, 2),
        Err(KMeansError::LengthMismatch)
    );
    assert_eq!(
        nearest_centre(&[0.0, 0.0], &centres, 2),
        Err(KMeansError::ZeroPoint { row: 0 })
    );
    assert_eq!(
        nearest_centre(&[1.0, 0.0], &centres, 0),
        Err(KMeansError::BadDimension)
    );
}

/// Runs with explicit buffers and checks that an error leaves them untouched.
fn err_of(
    points: &[f64],
    dim: usize,
    k: usize,
    centres_len: usize,
    scratch_len: usize,
    labels_len: usize,
) -> KMeansError {
    let mut centres = vec![7.0; centres_len];
    let mut scratch = vec![7.0; scratch_len];
    let mut labels = vec![7u8; labels_len];
    let e = spherical_kmeans(
        points,
        dim,
        k,
        10,
        &mut rng(0),
        &mut centres,
        &mut scratch,
        &mut labels,
    )
    .unwrap_err();
    assert!(centres.iter().all(|&x| x == 7.0));
    assert!(scratch.iter().all(|&x| x == 7.0));
    assert!(labels.iter().all(|&x| x == 7));
    e
}

#[test]
fn bad_input_is_reported() {
    let (points, _) = vmf_like(1, 3, 2, 5, 0.1, 0.5); // n = 10, dim = 3
    let s = scratch_len(2, 3);
    assert_eq!(s, 8);
    use KMeansError::*;
    assert_eq!(err_of(&points, 0, 2, 0, s, 10), BadDimension);
    assert_eq!(err_of(&points[..29], 3, 2, 6, s, 10), LengthMismatch);
    assert_eq!(err_of(&points, 3, 0, 0, 0, 10), NoClusters);
    assert_eq!(err_of(&points, 3, 11, 33, 44, 10), MoreClustersThanPoints);
    assert_eq!(err_of(&[], 3, 1, 3, 4, 0), MoreClustersThanPoints);
    assert_eq!(err_of(&points, 3, 2, 5, s, 10), LengthMismatch);
    assert_eq!(err_of(&points, 3, 2, 6, s - 1, 10), LengthMismatch);
    assert_eq!(err_of(&points, 3, 2, 6, s, 9), LengthMismatch);
    let many = vec![1.0; 300];
    assert_eq!(err_of(&many, 1, 256, 256, 512, 300), TooManyClusters);
    for (row, bad) in [(3, f64::NAN), (0, f64::INFINITY), (9, f64::NEG_INFINITY)] {
        let mut p = points.clone();
        p[row * 3 + 1] = bad;
        assert_eq!(err_of(&p, 3, 2, 6, s, 10), NonFinitePoint { row });
    }
    let mut p = points.clone();
    p[12..15].fill(0.0);
    assert_eq!(err_of(&p, 3, 2, 6, s, 10), ZeroPoint { row: 4 });
    let mut p = points.clone();
    p[0] = 1e200; // squared norm overflows
    assert_eq!(err_of(&p, 3, 2, 6, s, 10), NonFinitePoint { row: 0 });
    // A longer scratch is fine.
    let mut centres = vec![0.0; 6];
    let mut scratch = vec![0.0; 100];
    let mut labels = vec![0u8; 10];
    spherical_kmeans(
        &points,
        3,
        2,
        10,
        &mut rng(0),
        &mut centres,
        &mut scratch,
        &mut labels,
    )
    .unwrap();
    // Errors display.
    for e in [
        BadDimension,
        NonFinitePoint { row: 2 },
        ZeroPoint { row: 1 },
    ] {
        assert!(!e.to_string().is_empty());
        let _: &dyn core::error::Error = &e;
    }
}
